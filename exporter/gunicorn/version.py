"""Which gunicorn release a master runs, from the files it has mapped and its argv.

The answer is the version in the name of the installed distribution's metadata
directory (`gunicorn-23.0.0.dist-info`) in a site-packages directory the master uses.
Everything here reads paths another process chose, so it is linear in its input
(no regular expression runs over /proc/PID/maps), every directory listing is bounded,
and directories are listed only as that process's own user could list them.
"""

from __future__ import annotations

import os
import re

MAX_MAPS_BYTES = 1 << 20
MAX_SITES = 16
MAX_DIR_ENTRIES = 20_000      # entries looked at per directory listing
_SITE_MARKERS = ("/site-packages/", "/dist-packages/")
# applied to one directory entry name (at most 255 bytes), anchored at both ends
_DIST_INFO_RE = re.compile(r"gunicorn-(\d[0-9A-Za-z.+!]{0,40}?)(?:-py[\d.]{1,10})?\.(?:dist|egg)-info")


def site_dirs_from_maps(maps: str, limit: int = MAX_SITES) -> list[str]:
    """site-/dist-packages directories of the files mapped in a /proc/PID/maps text."""
    out: dict[str, None] = {}
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6:
            continue
        path = fields[5]
        for marker in _SITE_MARKERS:
            i = path.find(marker)
            if i > 0:
                out.setdefault(path[: i + len(marker) - 1])
                break
        if len(out) >= limit:
            break
    return list(out)


def version_from_entries(names) -> str | None:
    """The gunicorn version named by a `gunicorn-X.dist-info` entry among `names`."""
    for name in names:
        if name.startswith("gunicorn-") and name.endswith("-info") and len(name) <= 80:
            m = _DIST_INFO_RE.fullmatch(name)
            if m:
                return m.group(1)
    return None


def find_version(maps: str, argv: list[str], exe: str | None, list_dir) -> str:
    """The version, looking in (1) site directories of mapped files (setproctitle, gevent,
    ... live there, and setproctitle erases argv), (2) the prefix of the script or
    interpreter in argv, (3) the prefix of the executable. `list_dir(path, prefix, limit)`
    lists a directory as the process's own user would see it
    (`exporter.linux.pathwalk.PathWalker.list_dir`). "unknown" when nothing says."""
    sites = site_dirs_from_maps(maps)
    prefixes = [os.path.dirname(os.path.dirname(p)) for p in argv[:2] if p.startswith("/")]
    if exe and exe.startswith("/"):
        prefixes.append(os.path.dirname(os.path.dirname(exe)))
    for prefix in dict.fromkeys(prefixes):
        lib = os.path.join(prefix, "lib")
        for name in sorted(list_dir(lib, "python", MAX_DIR_ENTRIES))[:4]:
            sites.append(os.path.join(lib, name, "site-packages"))
            sites.append(os.path.join(lib, name, "dist-packages"))
    for site in list(dict.fromkeys(sites))[: 2 * MAX_SITES]:
        found = version_from_entries(sorted(list_dir(site, "gunicorn-", MAX_DIR_ENTRIES)))
        if found:
            return found
    return "unknown"
