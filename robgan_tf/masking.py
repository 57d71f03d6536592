"""Signs of gradient masking in an evaluation's results (Carlini et al. 2019's checklist, the
parts that need no extra attack)."""

MASKING_TOLERANCE = 0.01  # accuracy may rise by at most 1 point where it must not rise
LARGE_EPS_TOLERANCE = 0.02  # accuracy at a large eps (any image reachable) must be below 2%


def masking_checks(result, pgd_attack, strong_pgd, large_eps=None):
    """Signs of gradient masking in a result of `evaluate`, each check passed, failed or skipped.

    1. Robust accuracy does not rise with eps (by more than 1 point), for every attack.
    2. At `large_eps` (a key of the result's eps, e.g. "1") every white-box attack brings accuracy below 2%.
    3. The black-box Square does not fool more than 1 point (of all examples) beyond what the
       white-box attacks of the composition fooled, nor, run alone, score more than 1 point below
       the best white-box attack.
    4. Stronger attacks (more PGD steps and restarts, APGD) are not more than 1 point above PGD.
    """
    acc = result["robust_accuracy"]
    checks = []

    def check(name, failures, skipped_why=None):
        passed = None if skipped_why else not failures
        checks.append({"check": name, "passed": passed,
                       "detail": skipped_why or ("; ".join(failures) if failures else "ok")})

    rises = []
    for attack, by_eps in acc.items():
        curve = sorted((float(e), a) for e, a in by_eps.items())
        rises += [f"{attack}: {a:.3f} at eps={e:g} > {b:.3f} at eps={d:g}"
                  for (d, b), (e, a) in zip(curve, curve[1:]) if a > b + MASKING_TOLERANCE]
    several = any(len(v) > 1 for v in acc.values())
    check("accuracy falls as eps grows", rises, None if several else "only one eps evaluated")

    white = [(a, v[large_eps]) for a, v in acc.items() if large_eps in v and a not in ("square", "autoattack")]
    check(f"white-box accuracy < {LARGE_EPS_TOLERANCE:.0%} at a large eps",
          [f"{a}: {v:.3f} at eps={large_eps}" for a, v in white if v > LARGE_EPS_TOLERANCE],
          None if white else "no large eps evaluated (use --check-masking)")

    beaten = []
    for e, stages in result["autoattack_stages"].items():
        only_square = stages["apgd-t"] - stages["square"]
        if only_square > MASKING_TOLERANCE:
            beaten.append(f"eps={e}: Square fooled {only_square:.1%} of all examples where APGD-CE and APGD-T "
                          f"failed")
    compared = bool(result["autoattack_stages"])
    for e, square_acc in acc.get("square", {}).items():
        white_min = min((v[e] for a, v in acc.items() if a not in ("square", "autoattack") and e in v), default=None)
        compared |= white_min is not None
        if white_min is not None and square_acc < white_min - MASKING_TOLERANCE:
            beaten.append(f"eps={e}: Square alone {square_acc:.3f} < white-box {white_min:.3f}")
    check("black-box Square does not beat the white-box attacks", beaten,
          None if compared else "no Square and white-box results at the same eps")

    stronger = []
    for attack in (strong_pgd, "apgd-ce"):
        for e, v in acc.get(attack, {}).items():
            base = acc.get(pgd_attack, {}).get(e)
            if attack != pgd_attack and base is not None and v > base + MASKING_TOLERANCE:
                stronger.append(f"eps={e}: {attack} {v:.3f} > {pgd_attack} {base:.3f}")
    compared = any(attack in acc for attack in (strong_pgd, "apgd-ce")) and pgd_attack in acc
    check("stronger attacks do not raise accuracy", stronger, None if compared else "only one white-box attack run")
    return checks
