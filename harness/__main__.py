"""`python -m harness run [PYTEST ARGS]`: the main job — build the image if needed, boot the
guest, run the shipped scenarios. `python -m harness smoke`: boot one guest and check both
channels, printing the timings (what to run first on a new machine). `python -m harness bench
[--json]`: boot one guest and compare the checked stream path with the raw port."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness.images.qemu_pkg import DEFAULT_QEMU

REPO_SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


RUN_DESCRIPTION = """\
Build the guest image if needed and run scenarios with pytest. Every argument after `run`
(other than -h/--help) is passed on to pytest unchanged: paths, -k EXPR, -x, -n auto,
--alluredir=DIR and the plugin's --hil-* options (--hil-backend=model, --hil-kernel=K, ...).
Without a path among them, the shipped scenarios/ run.

  python -m harness run --hil-backend=model        # every shipped scenario, model only
  python -m harness run -k reboot -x               # a subset on the real guest
  python -m harness run my_cases/ --hil-kernel=debian:trixie/linux-image-cloud-amd64

`pytest --help` lists pytest's options and the plugin's (group "virtio-serial
hardware-in-the-loop harness")."""


def run_scenarios(pytest_args: list[str]) -> int:
    import pytest

    # A target is an existing path (or path::test); option values such as `-p no:x` are not.
    targets = [a for a in pytest_args if not a.startswith("-") and Path(a.split("::")[0]).exists()]
    args = pytest_args if targets else [str(REPO_SCENARIOS), *pytest_args]
    has_scenarios = any(REPO_SCENARIOS.rglob("*.yaml")) if REPO_SCENARIOS.is_dir() else False
    if not targets and not has_scenarios:
        print("no shipped scenarios yet: running the smoke check instead", file=sys.stderr)
        return smoke()
    return int(pytest.main(args))


def smoke() -> int:
    from harness.guest.guest import ImageGuests
    from harness.images.builder import build_image
    from harness.logs import print_progress
    from harness.machine.qemu import ControllerSpec

    print_progress()  # image build, QEMU and guest progress
    started = time.monotonic()
    image = build_image()
    print(f"image: {image.directory} ({time.monotonic() - started:.1f} s)")
    guests = ImageGuests.auto(image)
    print(f"hil: {guests.choice.describe()}")
    with tempfile.TemporaryDirectory(prefix="hil-smoke-") as workdir:
        guest = guests.guest(Path(workdir), "smoke", controllers=[ControllerSpec("vser0")])
        try:
            guest.boot()
            ssh = guest.run("uname -r")
            serial = guest.run("uname -r", channel="serial")
        finally:
            how = guest.shutdown()
    print(
        f"boot: ready marker {guest.boot_times.to_ready_marker:.1f} s, SSH ready "
        f"{guest.boot_times.to_ssh:.1f} s; kernel {ssh.output.strip()}; shutdown: {how}"
    )
    good = ssh.ok and serial.ok and ssh.output == serial.output
    print("smoke check " + ("passed" if good else f"FAILED: ssh={ssh} serial={serial}"))
    return 0 if good else 1


def explore(pytest_args: list[str]) -> int:
    """`python -m harness explore [SECONDS] ...` = `pytest --hil-explore[=SECONDS] ...`."""
    import pytest

    first = pytest_args[0] if pytest_args else ""
    seconds = [first] if first.replace(".", "", 1).isdigit() else []
    option = f"--hil-explore={seconds[0]}" if seconds else "--hil-explore"
    rest = pytest_args[len(seconds) :]
    # The shipped scenarios are only collected to be replaced by the exploration items.
    return int(pytest.main([str(REPO_SCENARIOS), option, "-p", "no:cacheprovider", *rest]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "run",
        help="run the shipped scenarios (every other argument is passed on to pytest)",
        usage="python -m harness run [PYTEST ARGS ...]",
        description=RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_parser("smoke", help="boot one guest and check SSH and serial")
    commands.add_parser(
        "explore",
        help="explore random step sequences (pytest --hil-explore; other arguments go to pytest)",
        usage="python -m harness explore [SECONDS] [PYTEST ARGS ...]",
    )
    table = commands.add_parser(
        "table", help="one kernel/QEMU table from the allure result dirs of several shards"
    )
    table.add_argument("dirs", nargs="+", type=Path, metavar="ALLURE_DIR")
    soak = commands.add_parser("soak", help="streams and faults on one long-lived guest")
    soak.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    soak.add_argument("--seed", type=int, default=1, help="the fault mix's seed (default 1)")
    soak.add_argument(
        "--qemu",
        default=DEFAULT_QEMU,
        metavar="SPEC",
        help=f"the QEMU to run, as for --hil-qemu (e.g. debian:trixie/qemu-system-x86; "
        f"default {DEFAULT_QEMU})",
    )
    bench = commands.add_parser(
        "bench",
        help="boot one guest; raw vs checked stream MB/s (1 and 4 ports) and round trips",
        description="Boot one guest and print, for each direction and for 1 and 4 ports, the "
        "raw port's MB/s (busybox dd in the guest), the checked stream path's MB/s and their "
        "ratio; checked totals with streams both ways at once; and the 1 byte / 4 KiB round "
        "trip through the agent against `cat` in the guest (p50/p99, microseconds). Compare "
        "ratios: absolute numbers depend on the machine's load.",
    )
    bench.add_argument("--json", action="store_true", help="also print one JSON line last")
    bench.add_argument(
        "--mib", type=int, default=128, help="MiB per direction and case (default 128)"
    )
    bench.add_argument(
        "--round-trips", type=int, default=200, help="round trips per case (default 200)"
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="raw/checked pairs per throughput case, raw first and checked first in turn; the "
        "ratio is balanced over both orders (default 6)",
    )
    bench.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave the guest's vCPU thread to the scheduler (by default it gets a core of its "
        "own and QEMU's other threads and the harness share the rest, so that which core it "
        "shares with whom does not change from one transfer to the next)",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "smoke":
        return smoke()
    if args.command == "explore":
        return explore(rest)
    if args.command == "table":
        from harness.plugin.report import merged_table

        print(merged_table(args.dirs))
        return 0
    if args.command == "soak":
        from harness.logs import print_progress
        from harness.soak import soak as run_soak

        print_progress()
        return run_soak(args.minutes, args.seed, qemu=args.qemu)
    if args.command == "bench":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from harness.backend.bench import DEFAULT_REPEAT
        from harness.backend.bench import bench as run_bench

        repeat = DEFAULT_REPEAT if args.repeat is None else args.repeat
        return run_bench(args.mib, args.round_trips, args.json, repeat, args.pin)
    return run_scenarios(rest)


if __name__ == "__main__":
    sys.exit(main())
