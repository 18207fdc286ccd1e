"""What Linux can carry of a tar entry: device numbers, path lengths and xattrs (T4, T5, T6).

A container engine applies a layer by making each entry with system calls (mknod, symlink,
lsetxattr...), and the kernel refuses what it cannot hold; the engine then fails the layer.
ocifs makes no system call for an entry, so it asks the same questions here, while the layer is
indexed, and the tar reader refuses the layer with one line naming the entry (and the
attribute) rather than serve what a read of the mount would then fail on.

* Device numbers: the kernel's ``dev_t`` holds a 12-bit major and a 20-bit minor (MINORBITS),
  and FUSE hands ``st_rdev`` to it as 32 bits in the same split, so major 0-4095 and minor
  0-1048575. containerd and umoci pass ``unix.Mkdev(uint32(major), uint32(minor))`` to
  mknod, and the kernel keeps the low 32 bits: a larger number makes another device, silently.
* Paths: every path a system call takes fits in PATH_MAX (4096) bytes with its terminating
  NUL, so an entry or hardlink target whose clean path (``/`` and its components) is longer
  than 4095 bytes cannot be made, nor can a symlink whose target text is (ENAMETOOLONG).
* xattrs, in the order the kernel's setxattr(2) checks them: a name that holds a NUL (Go's
  lsetxattr refuses it: EINVAL), an empty one or one over XATTR_NAME_MAX (255 bytes: ERANGE),
  a value over XATTR_SIZE_MAX (65536 bytes: E2BIG), an ACL (``system.posix_acl_access``,
  ``system.posix_acl_default``) that posix_acl_from_xattr and posix_acl_valid refuse, a
  ``security.capability`` that is not a v2 or v3 ``vfs_cap_data`` (EINVAL; an empty value
  too, as Linux 6.18.44 refuses it: an earlier 6.18 build stored it as it was, so there the
  engines kept it, and ocifs takes the newer, stricter verdict), a ``user.*`` attribute on
  what is not a regular file or a directory (EPERM), a namespace prefix with no name after
  it (EINVAL). containerd, Docker and podman leave out an attribute whose setxattr fails
  with ENOTSUP and fail the layer on any other error; ENOTSUP is what a name outside the
  namespaces Linux has handlers for gets (``user.``, ``trusted.``, ``security.``, and of
  ``system.`` the two ACLs), and an ACL of another version than 2 or on a symlink. Those are
  left out here too, with a warning.
  So is an ACL with no entries (an empty value, or the 4-byte version header alone): setxattr
  takes it as "remove the ACL" and succeeds, so the engine's file has no such attribute.
  Seen on this project's host (Linux 6.18, ext4 and tmpfs): ``setfattr -n
  system.posix_acl_access -v 0x02000000 f`` exits 0, then ``getfattr -d -m - f`` lists
  nothing and ``getfattr -n system.posix_acl_access f`` says "No such attribute"; an empty
  value on a directory's ``system.posix_acl_default`` removes the default ACL it had. Served
  as it is, such an attribute was listed by listxattr while getxattr gave ENODATA (the
  kernel's FUSE client parses an ACL it gets, and one with no entries is none).
* An access ACL as the engines leave it: they set an entry's xattrs and then chmod it to the
  tar's mode (moby's pkg/archive ``createTarFile``: Lchown, Lsetxattr of each, handleLChmod;
  containerd's and containers/storage's copies keep that order). setxattr stores an ACL that
  only says what mode bits say (user::, group::, other::, no mask) as those bits and no
  attribute (posix_acl_equiv_mode), and chmod then sets the tar's mode; so the file has no ACL.
  Any other ACL is stored, and chmod rewrites its user::, other:: and mask:: (group:: without
  a mask) from the mode (posix_acl_chmod). ``access_acl_after_chmod`` is that result, with the
  ids of the entries that name nobody as the kernel writes them back (ACL_UNDEFINED_ID).
  The limits are the VFS's: a filesystem may hold less (ext4 without ``ea_inode`` keeps all of
  an inode's xattrs in one block), and a security module may refuse ``security.*`` values.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

PATH_MAX = 4096  # bytes of a path with its terminating NUL (linux/limits.h)
DEV_MAJOR_MAX = (1 << 12) - 1  # the kernel's dev_t: 32 - MINORBITS bits of major
DEV_MINOR_MAX = (1 << 20) - 1  # MINORBITS = 20
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
CAPABILITY = b"security.capability"
# Namespaces whose handler takes any name after the prefix (fs/xattr.c xattr_resolve_name).
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")
USER_PREFIX = b"user."

# The posix_acl xattr format (include/uapi/linux/posix_acl_xattr.h): a little-endian version
# header, then (tag, perm, id) entries.
ACL_VERSION = 2
ACL_HEADER = struct.Struct("<I")
ACL_ENTRY = struct.Struct("<HHI")
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
ACL_PERMS = 0o7  # read, write, execute
NO_ID = 0xFFFFFFFF  # (uid_t)-1: no user the kernel can map

# vfs_cap_data (include/uapi/linux/capability.h): the revision in magic_etc's top byte.
CAP_REVISIONS = {20: 0x02000000, 24: 0x03000000}  # size -> revision: v2, v3 (with a root uid)
CAP_FLAGS_EFFECTIVE = 0x000001


def device_problem(major: int, minor: int) -> str | None:
    """Why Linux cannot carry device ``major:minor``, or None."""
    if 0 <= major <= DEV_MAJOR_MAX and 0 <= minor <= DEV_MINOR_MAX:
        return None
    return (
        f"device number {major}:{minor} is beyond what Linux carries"
        f" (major 0-{DEV_MAJOR_MAX}, minor 0-{DEV_MINOR_MAX})"
    )


def clean_path_length(raw: bytes) -> int:
    """Bytes of ``raw`` as an absolute clean path: ``/``, its components joined by ``/``,
    without empty and ``.`` components, a ``..`` taking the one before it away."""
    kept: list[int] = []
    for component in raw.split(b"/"):
        if component in (b"", b"."):
            continue
        if component == b"..":
            if kept:
                kept.pop()
            continue  # escaping the root is refused by the merge (P2)
        kept.append(len(component))
    return max(1, sum(kept) + len(kept))


def path_problem(raw: bytes, what: str) -> str | None:
    """Why the path ``raw`` (an entry's, a hardlink's target) cannot be made, or None."""
    if len(raw) + 1 < PATH_MAX:  # a clean path is at most one byte longer: the leading '/'
        return None
    length = clean_path_length(raw)
    if length < PATH_MAX:
        return None
    return (
        f"{what} is {length} bytes long (clean, from /),"
        f" over PATH_MAX ({PATH_MAX} bytes with its NUL)"
    )


def symlink_target_problem(target: bytes) -> str | None:
    """Why symlink(2) refuses the target text ``target``, or None."""
    if len(target) < PATH_MAX:
        return None
    return f"symlink target of {len(target)} bytes, over PATH_MAX ({PATH_MAX} bytes with its NUL)"


class XattrProblem(NamedTuple):
    """An xattr the kernel would not set: ``refused`` fails the layer, else it is left out."""

    name: bytes
    reason: str
    refused: bool


def _refuse(reason: str) -> tuple[str, bool]:
    return reason, True


def _leave_out(reason: str) -> tuple[str, bool]:
    return reason, False


def acl_problem(value: bytes, file_type: int, default: bool) -> tuple[str, bool] | None:
    """What setxattr makes of an ACL value on a file of ``file_type`` (0: not known here):
    posix_acl_from_xattr reads it, vfs_set_acl refuses symlinks, posix_acl_valid checks the
    entries, set_posix_acl keeps default ACLs for directories; None if it is set."""
    entries: list[tuple[int, int, int]] = []
    if value:  # an empty value is no ACL, as a header alone is: setting either removes one
        if len(value) < ACL_HEADER.size:
            return _refuse(f"an ACL of {len(value)} bytes, shorter than its header (EINVAL)")
        (version,) = ACL_HEADER.unpack_from(value)
        if version != ACL_VERSION:
            return _leave_out(f"an ACL of version {version}, not {ACL_VERSION} (EOPNOTSUPP)")
        if (len(value) - ACL_HEADER.size) % ACL_ENTRY.size:
            return _refuse(f"an ACL of {len(value)} bytes: no whole number of entries (EINVAL)")
        entries = list(ACL_ENTRY.iter_unpack(value[ACL_HEADER.size :]))
        problem = _acl_entry_problem(entries)
        if problem is not None:
            return _refuse(f"an ACL the kernel cannot read: {problem} (EINVAL)")
    if file_type == stat.S_IFLNK:
        return _leave_out("an ACL on a symlink (EOPNOTSUPP)")
    if not entries:  # setxattr takes it as "remove the ACL": the engine's file has none
        return _leave_out("an ACL with no entries, which setxattr takes as removing the ACL")
    problem = _acl_order_problem(entries)
    if problem is not None:
        return _refuse(f"an ACL the kernel refuses: {problem} (EINVAL)")
    if default and file_type not in (0, stat.S_IFDIR):
        return _refuse("a default ACL on what is not a directory (EACCES)")
    return None


def access_acl_after_chmod(value: bytes, mode: int) -> bytes | None:
    """The ``system.posix_acl_access`` a file has after an engine sets ``value`` (an ACL that
    ``acl_problem`` lets through, with entries) and then chmods it to ``mode``; None when the
    ACL said no more than mode bits do and so is not stored."""
    entries = list(ACL_ENTRY.iter_unpack(value[ACL_HEADER.size :]))
    if all(tag in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER) for tag, _, _ in entries):
        return None  # posix_acl_equiv_mode: folded into the mode, which chmod then sets
    has_mask = any(tag == ACL_MASK for tag, _, _ in entries)
    from_mode = {
        ACL_USER_OBJ: (mode >> 6) & ACL_PERMS,
        ACL_MASK: (mode >> 3) & ACL_PERMS,
        ACL_OTHER: mode & ACL_PERMS,
    }
    if not has_mask:
        from_mode[ACL_GROUP_OBJ] = (mode >> 3) & ACL_PERMS
    out = [ACL_HEADER.pack(ACL_VERSION)]
    for tag, perm, ident in entries:
        named = tag in (ACL_USER, ACL_GROUP)
        out.append(ACL_ENTRY.pack(tag, from_mode.get(tag, perm), ident if named else NO_ID))
    return b"".join(out)


def _acl_entry_problem(entries: list[tuple[int, int, int]]) -> str | None:
    """posix_acl_from_xattr's checks: known tags, and ids the kernel can map."""
    for number, (tag, _perm, ident) in enumerate(entries):
        if tag not in (ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER):
            return f"entry {number} has the unknown tag {tag:#x}"
        if tag in (ACL_USER, ACL_GROUP) and ident == NO_ID:
            return f"entry {number} names id {NO_ID}"
    return None


def _acl_order_problem(entries: list[tuple[int, int, int]]) -> str | None:
    """posix_acl_valid's checks: permissions rwx at most, and the entries in the order
    user::, user:ID..., group::, group:ID..., mask:: (needed with named entries), other::."""
    state = ACL_USER_OBJ  # what posix_acl_valid expects next
    needs_mask = False
    for number, (tag, perm, _ident) in enumerate(entries):
        if perm & ~ACL_PERMS:
            return f"entry {number} has the permissions {perm:#o}"
        if tag == ACL_USER_OBJ and state == ACL_USER_OBJ:
            state = ACL_USER
        elif tag == ACL_USER and state == ACL_USER:
            needs_mask = True
        elif tag == ACL_GROUP_OBJ and state == ACL_USER:
            state = ACL_GROUP
        elif tag == ACL_GROUP and state == ACL_GROUP:
            needs_mask = True
        elif tag == ACL_MASK and state == ACL_GROUP:
            state = ACL_OTHER
        elif tag == ACL_OTHER and (state == ACL_OTHER or (state == ACL_GROUP and not needs_mask)):
            state = 0
        else:
            return f"entry {number} (tag {tag:#x}) is out of order, repeated or lacks a mask"
    if state != 0:
        return "it lacks user::, group:: or other::"
    return None


def capability_problem(value: bytes, file_type: int, default: bool) -> tuple[str, bool] | None:
    """What setxattr makes of a ``security.capability`` value (cap_convert_nscap's checks)."""
    revision = CAP_REVISIONS.get(len(value))
    magic = int.from_bytes(value[:4], "little") if len(value) >= 4 else None
    if revision is None or magic is None or magic & ~CAP_FLAGS_EFFECTIVE != revision:
        shown = "no magic" if magic is None else f"magic {magic:#010x}"
        return _refuse(
            f"not a file capability the kernel takes: {len(value)} bytes, {shown}"
            " (a v2 vfs_cap_data is 20 bytes, a v3 one 24; EINVAL)"
        )
    if len(value) == 24 and int.from_bytes(value[20:24], "little") == NO_ID:
        return _refuse(f"a v3 file capability for root uid {NO_ID} (EINVAL)")
    return None


# The attributes whose value the kernel parses: name -> (check, default ACL?).
_VALUE_CHECKS: dict[bytes, Callable[[bytes, int, bool], tuple[str, bool] | None]] = {
    ACL_ACCESS: acl_problem,
    ACL_DEFAULT: acl_problem,
    CAPABILITY: capability_problem,
}


def xattr_problems(xattrs: dict[bytes, bytes], file_type: int) -> Iterator[XattrProblem]:
    """Each xattr of an entry of ``file_type`` (a ``stat.S_IF*`` type; 0 for a hardlink,
    whose target this does not know) that setxattr(2) would not set, and whether the engines
    fail the layer on it or leave it out (ENOTSUP)."""
    for name, value in list(xattrs.items()):  # the caller may drop what is yielded
        problem = _xattr_problem(name, value, file_type)
        if problem is not None:
            yield XattrProblem(name, *problem)


def _xattr_problem(name: bytes, value: bytes, file_type: int) -> tuple[str, bool] | None:
    if not name:
        return _refuse("an empty name (ERANGE)")
    if b"\x00" in name:
        return _refuse("a name that holds a NUL byte (EINVAL)")
    if len(name) > XATTR_NAME_MAX:
        return _refuse(f"a name of {len(name)} bytes, over {XATTR_NAME_MAX} (ERANGE)")
    if len(value) > XATTR_SIZE_MAX:
        return _refuse(f"a value of {len(value)} bytes, over {XATTR_SIZE_MAX} (E2BIG)")
    check = _VALUE_CHECKS.get(name)
    if check is not None:
        problem = check(value, file_type, name == ACL_DEFAULT)
        if problem is not None or name != CAPABILITY:
            return problem  # an ACL needs no namespace check: its name is its handler's
    if name.startswith(USER_PREFIX) and file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        return _refuse("a user.* attribute on what is not a file or a directory (EPERM)")
    for prefix in XATTR_PREFIXES:
        if name.startswith(prefix):
            return _refuse("no name after the namespace (EINVAL)") if name == prefix else None
    return _leave_out("a namespace Linux has no handler for (EOPNOTSUPP)")
