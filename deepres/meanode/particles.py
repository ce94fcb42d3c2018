"""Initial particles z_0^k = (u_k, v_k), k = 1..K, standing for the law μ_0 of the units at initialization.

Three ways to draw them (each entry has standard deviation ``std_u`` for u
and ``std_v`` for v, from the parameterization):

* ``"antithetic"`` — K/2 i.i.d. Gaussian pairs (u, v), each followed by its
  mirror (u, −v). The empirical mean field (1/K)Σ_k v_k σ(a·u_kᵀh) is then
  exactly zero for every h, like its expectation: the initial drift vanishes
  to rounding, as in the limit. K must be even.
* ``"sobol"`` — K/2 points of a scrambled Sobol sequence in [0, 1)^{2D},
  mapped to Gaussians with the inverse normal CDF (``torch.special.ndtri``),
  the first D coordinates giving u and the last D giving v, and each point
  paired antithetically like ``"antithetic"``. The pairing keeps the exact
  zero drift at initialization (which the studies rely on); the Sobol points
  make the empirical law of (u, v) closer to μ_0 than i.i.d. draws, which
  reduces the particle error of the trained limit. K must be even; the
  balance properties of Sobol points are best when K/2 is a power of two.
  The scrambling seed is drawn from ``generator``.
* ``"iid"`` — K i.i.d. Gaussian particles (any K). The initial drift is
  O(1/√K), not zero.

Pairs are interleaved: particles 2k and 2k+1 are mirrors, so any even prefix
of the particles is itself antithetic.
"""

from __future__ import annotations

import torch

from deepres._checks import check_choice

__all__ = ["PARTICLE_INITS", "init_particles"]

#: Names accepted by the ``particle_init`` argument.
PARTICLE_INITS: tuple[str, ...] = ("antithetic", "sobol", "iid")

# Sobol coordinates are kept away from 0 and 1, where the inverse normal CDF is
# infinite; scrambled points reach them with probability about 2^-53 per draw.
_EDGE = 2.0**-40


def _sobol_gaussians(count: int, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` scrambled Sobol points in [0, 1)^dim mapped to standard Gaussians (float64, CPU)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                             device=generator.device if generator is not None else "cpu").item())
    engine = torch.quasirandom.SobolEngine(dimension=dim, scramble=True, seed=seed)
    points = engine.draw(count, dtype=torch.float64).clamp_(_EDGE, 1.0 - _EDGE)
    return torch.special.ndtri(points)


def init_particles(
    kind: str,
    particles: int,
    dim: int,
    std_u: float,
    std_v: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the K initial particles.

    Args:
        kind: ``"antithetic"``, ``"sobol"`` or ``"iid"`` (see the module docstring).
        particles: K (even for ``"antithetic"`` and ``"sobol"``).
        dim: D.
        std_u, std_v: standard deviation of each entry of u and of v.
        device, dtype: of the result. Defaults: PyTorch's defaults.
        generator: a ``torch.Generator`` (on ``device`` for the Gaussian
            inits). Default: the global generator.

    Returns:
        (u, v), each of shape (K, D).

    Raises:
        TypeError: a non-str ``kind``.
        ValueError: an unknown ``kind``, or an odd K with a paired init.

    Example:
        >>> u, v = init_particles("antithetic", 4, 3, 1.0, 1.0)
        >>> torch.equal(v[0], -v[1]) and torch.equal(u[0], u[1])
        True
    """
    check_choice(kind, "particle_init", PARTICLE_INITS)
    if kind != "iid" and particles % 2 != 0:
        raise ValueError(
            f"particle_init={kind!r} pairs each particle (u, v) with (u, -v), so particles must be "
            f"even; got {particles}"
        )
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    count = particles if kind == "iid" else particles // 2
    if kind == "sobol":
        gauss = _sobol_gaussians(count, 2 * dim, generator).to(device=device, dtype=dtype)
        u = gauss[:, :dim] * std_u
        v = gauss[:, dim:] * std_v
    else:
        u = torch.empty(count, dim, device=device, dtype=dtype)
        v = torch.empty(count, dim, device=device, dtype=dtype)
        u.normal_(0.0, std_u, generator=generator)
        v.normal_(0.0, std_v, generator=generator)
    if kind == "iid":
        return u, v
    u = torch.stack((u, u), dim=1).reshape(particles, dim)
    v = torch.stack((v, -v), dim=1).reshape(particles, dim)
    return u, v
