"""Writing a file so that a failed write never destroys the previous one.

:func:`write_replacing` is how ``ConvolutionalMixture.save`` and
``ConvolutionalMixtureNetwork.save`` write: the new file is written next to
the target under a temporary name and renamed over it only when complete
(``os.replace``, atomic on POSIX and Windows), so an interrupted or failed
save (Ctrl-C, a full disk, an error while writing) leaves the previous file
as it was.  Where a rename would change what the path *is*, the file is
written in place instead, as ``open(path, "wb")`` would: a device or pipe
(``/dev/null``), a file with other hard links (they would keep the old
content), or a file in a folder where no new file can be made.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat


def write_replacing(path, write):
    """Call ``write(file)`` on a binary file that becomes ``path`` when complete.

    A symbolic link is followed.  An existing regular file keeps its
    permissions (and its owner, where the process may set it); a file
    without write permission is refused with ``PermissionError``, as
    ``open`` refuses it.  Errors name ``path``, not the temporary file.
    """
    path = os.path.realpath(os.fspath(path))
    folder = os.path.dirname(path)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        return _write_in_place(path, write)  # a device, a pipe, a socket
    if old is not None and not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    if old is not None and (old.st_nlink > 1 or not os.access(folder, os.W_OK)):
        return _write_in_place(path, write)
    tmp = os.path.join(folder, f".calm_np-{os.urandom(6).hex()}.tmp")
    try:
        fh = open(tmp, "xb")
    except OSError as exc:  # e.g. no such folder: name the target
        raise type(exc)(exc.errno, exc.strerror, path) from None
    try:
        with fh, _naming(path):
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if old is not None:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
            with contextlib.suppress(OSError):  # only root may give files away
                os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _write_in_place(path, write):
    with _naming(path), open(path, "wb") as fh:
        write(fh)


@contextlib.contextmanager
def _naming(path):
    """An ``OSError`` while writing (a full disk, ``/dev/full``) names
    ``path``, the file the caller asked for, not a temporary one or none."""
    try:
        yield
    except OSError as exc:
        if exc.filename == path:
            raise
        raise type(exc)(exc.errno, exc.strerror or str(exc), path) from exc
