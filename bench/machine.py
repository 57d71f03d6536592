"""The machine a benchmark ran on, recorded with its numbers: CPU model and flags (lscpu), cores, nice."""

import os
import platform
import subprocess


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "nice": os.nice(0)}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu_model"] = fields.get("Model name", "")
        info["cpu_flags"] = fields.get("Flags", "")
        info["threads_per_core"] = fields.get("Thread(s) per core", "")
    except (OSError, subprocess.SubprocessError) as e:
        info["lscpu_error"] = str(e)
    return info

