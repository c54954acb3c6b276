"""Images as root filesystems, and the bubblewrap command line for one container.

There is no image registry: an image name selects a root filesystem that
already exists on this machine (see ``Images.resolve``). A container gets its
own mount, PID and UTS namespaces; it shares the host network, so
127.0.0.1 reaches kube-apiserver and the S3 server exactly as the pod's
environment says.

The sandbox's ``/`` is a tmpfs holding one read-only bind per top-level entry
of the image's root filesystem, so volumes can be mounted at new top-level
paths. A volume at a path whose parent is read-only (``/opt/app/data``)
"shadows" that parent: a tmpfs over it that re-binds every entry, which makes
room for the new mount point without touching the host.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Top-level entries of a root filesystem the sandbox provides itself.
_SPECIAL = {"proc", "dev", "tmp", "run", "lost+found"}


class ImageError(Exception):
    """The image name maps to no root filesystem here."""


@dataclass(frozen=True)
class Image:
    """A root filesystem standing in for a container image."""

    name: str
    rootfs: Path
    path: str = DEFAULT_PATH
    entrypoint: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()
    binds: tuple[str, ...] = ()  # host paths shown read-only at the same place


def _repository(image: str) -> tuple[str, list[str]]:
    """Split an image reference into (registry or "", path components)."""
    ref = image.split("@", 1)[0]
    parts = ref.split("/")
    last = parts[-1].split(":", 1)[0]
    parts[-1] = last
    registry = ""
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
    return registry, parts


def is_static_elf(path: Path) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        phoff = struct.unpack_from("<Q", header, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (ptype,) = struct.unpack_from("<I", table, i * phentsize)
        if ptype == 3:  # PT_INTERP
            return False
    return True


def build_busybox_rootfs(busybox: Path, dest: Path) -> Path:
    """A root filesystem holding only a static busybox and its applet links."""
    if not busybox.exists() or not is_static_elf(busybox):
        raise ImageError(
            f"{busybox} is missing or not statically linked: "
            "install Debian's busybox-static (apt-get install busybox-static)"
        )
    marker = dest / ".complete"
    if marker.exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "bin").mkdir(parents=True)
    shutil.copy2(busybox, tmp / "bin" / "busybox")
    applets = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = tmp / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    for d in ("etc", "root", "home", "var", "usr/bin", "usr/sbin", "sbin", "sys"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    (tmp / "var" / "run").symlink_to("../run")
    (tmp / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (tmp / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (tmp / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    (tmp / "etc" / "resolv.conf").write_text("")
    (tmp / ".complete").write_text("")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


@dataclass
class Images:
    """The table from image names to root filesystems on this machine.

    - ``busybox`` (any tag or registry): only Debian's busybox-static.
    - any image with a path component starting with ``kubemr`` (``kubemr``,
      ``kubemr-shim:dev``, ``ghcr.io/kubemr/shim``): the host's root, read-only,
      with the checkout's ``.venv/bin`` first on PATH, so the project as
      installed there is what runs; the default entrypoint is ``kubemr``.
    - ``debian``, ``ubuntu``, ``python`` (any tag): the host's root, read-only.
    """

    busybox_rootfs: Path
    project_root: Path
    state_dir: Path
    extra: dict[str, Image] = field(default_factory=dict)

    def resolve(self, image: str) -> Image:
        _, parts = _repository(image)
        name = parts[-1] if parts else ""
        hide = (str(self.state_dir),)
        if name == "busybox" and parts[:-1] in ([], ["library"]):
            return Image(image, self.busybox_rootfs, entrypoint=("sh",))
        if any(p.startswith("kubemr") for p in parts):
            venv = self.project_root / ".venv"
            # a checkout under /tmp (a private tmpfs in the sandbox) must still show
            binds = {str(self.project_root), os.path.realpath(venv)}
            return Image(
                image,
                Path("/"),
                path=f"{venv / 'bin'}:{DEFAULT_PATH}",
                entrypoint=("kubemr",),
                hide=hide,
                binds=tuple(sorted(binds)),
            )
        if name in ("debian", "ubuntu", "python") and parts[:-1] in ([], ["library"]):
            return Image(image, Path("/"), entrypoint=("sh",), hide=hide)
        if image in self.extra:
            return self.extra[image]
        raise ImageError(
            f"image {image!r} is not available on the devcluster node "
            "(known: busybox, debian, ubuntu, python, and kubemr* project images)"
        )


@dataclass(frozen=True)
class Mount:
    """A host path bound into the sandbox."""

    source: str
    target: str
    read_only: bool = False


class Sandbox:
    """Builds the bwrap argument list for one container."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.args: list[str] = []
        # sandbox dir -> host dir it shows (None: a tmpfs we created)
        self.mounts: dict[str, str | None] = {"/": None}
        self.writable: set[str] = {"/"}
        self.links: dict[str, str] = {}
        root = image.rootfs
        for entry in sorted(os.listdir(root)):
            if entry in _SPECIAL:
                continue
            host = root / entry
            if host.is_symlink():
                self.args += ["--symlink", os.readlink(host), f"/{entry}"]
                self.links[f"/{entry}"] = os.readlink(host)
            elif host.is_dir():
                self.args += ["--ro-bind", str(host), f"/{entry}"]
                self.mounts[f"/{entry}"] = str(host)
            elif host.is_file():
                self.args += ["--ro-bind", str(host), f"/{entry}"]
        self.args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
        for d in ("/proc", "/dev", "/tmp", "/run"):
            self.mounts[d] = None
        self.writable |= {"/tmp", "/run"}
        for path in image.binds:
            if os.path.isdir(path):
                self.bind(Mount(path, path, read_only=True))
        for hidden in image.hide:
            if self._host_path(hidden) is not None and os.path.isdir(hidden):
                self.args += ["--tmpfs", hidden]

    def _owner(self, path: str) -> str:
        """The deepest mount point at or above ``path``."""
        p = path
        while p not in self.mounts:
            p = os.path.dirname(p)
        return p

    def _host_path(self, path: str) -> str | None:
        """Where ``path`` in the sandbox lives on the host (None: in a tmpfs)."""
        owner = self._owner(path)
        source = self.mounts[owner]
        if source is None:
            return None
        rel = os.path.relpath(path, owner)
        return source if rel == "." else os.path.join(source, rel)

    def resolve(self, path: str, depth: int = 0) -> str:
        """Resolve symlinks in ``path`` as the sandbox will see them."""
        path = os.path.normpath(path)
        parts = [p for p in path.split("/") if p]
        cur = "/"
        for i, part in enumerate(parts):
            nxt = os.path.join(cur, part)
            target = self.links.get(nxt)
            host = self._host_path(nxt)
            if target is None and host is not None and os.path.islink(host):
                target = os.readlink(host)
            if target is not None and depth < 16:
                base = os.path.normpath(os.path.join(cur, target))
                rest = "/".join(parts[i + 1 :])
                return self.resolve(os.path.join(base, rest) if rest else base, depth + 1)
            cur = nxt
        return cur

    def _make_room(self, path: str) -> None:
        """Make sure ``path``'s parents can be created inside the sandbox."""
        parent = os.path.dirname(path)
        chain = []
        p = parent
        while p != "/":
            chain.append(p)
            p = os.path.dirname(p)
        for d in reversed(chain):
            owner = self._owner(d)
            host = self._host_path(d)
            if host is None or owner in self.writable:
                continue  # a tmpfs or a writable volume: bwrap can mkdir here
            if os.path.isdir(host):
                # read-only directory from the image: shadow it
                self.args += ["--tmpfs", d]
                for entry in sorted(os.listdir(host)):
                    src = os.path.join(host, entry)
                    dst = os.path.join(d, entry)
                    if os.path.islink(src):
                        self.args += ["--symlink", os.readlink(src), dst]
                        self.links[dst] = os.readlink(src)
                    else:
                        self.args += ["--ro-bind", src, dst]
                        self.mounts[dst] = src
                self.mounts[d] = None
                self.writable.add(d)
                return self._make_room(path)
            return  # missing: bwrap creates it under a writable ancestor

    def bind(self, mount: Mount) -> None:
        target = self.resolve(mount.target)
        host = self._host_path(target)
        if host is None or not os.path.exists(host):
            self._make_room(target)
        self.args += ["--ro-bind" if mount.read_only else "--bind", mount.source, target]
        self.mounts[target] = mount.source
        if not mount.read_only and os.path.isdir(mount.source):
            self.writable.add(target)

    def workdir(self, path: str) -> str:
        target = self.resolve(path)
        host = self._host_path(target)
        if host is None or not os.path.isdir(host):
            self._make_room(target)
            self.args += ["--dir", target]
        return target

    def argv(self, bwrap: str, hostname: str, workdir: str, command: list[str]) -> list[str]:
        cwd = self.workdir(workdir)
        return [
            bwrap,
            *self.args,
            "--unshare-pid",
            "--unshare-uts",
            "--hostname",
            hostname,
            "--die-with-parent",
            "--chdir",
            cwd,
            "--",
            *command,
        ]
