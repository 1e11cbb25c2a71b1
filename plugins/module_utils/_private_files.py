# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files and directories only the running user may read: atomic writes, 0700 directories, flock.

The account store, the lookup's token cache and the refresher keep secrets with these. Standard
library only (and the collection's errors), so that whatever imports it stays light.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time

from ansible_collections.oidc.tokens.plugins.module_utils._errors import PrivatePathError, StorePermissionError

DIR_MODE = 0o700
FILE_MODE = 0o600
TMP_INFIX = '.tmp-'   # temporary files are '.BASE.tmp-' and 16 hex digits

_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)


# --- atomic writes ---------------------------------------------------------------------------

def fsync_dir(path):
    """fsync the directory ``path``, so that a rename in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_temp_file(path):
    """A new empty temporary file beside ``path``, to be renamed over it: (fd, its path).

    Its name cannot be guessed and it is made with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: nobody
    else can read it, not even for a moment, nor plant it in advance in a sticky world-writable
    directory such as /tmp. OSError when it cannot be made.
    """
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, '.%s%s%s' % (base, TMP_INFIX, secrets.token_hex(8)))
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, FILE_MODE), tmp


def replace_with_temp_file(fd, tmp, path, data, sync=True):
    """Write ``data`` (bytes) into the temporary file ``fd``, close it and rename it over ``path``.

    With ``sync`` the file is fsynced before the rename; fsync_dir the directory afterwards for the
    rename itself. Readers see the old content or the new, never a partial file. On any failure the
    temporary file is removed and the error raised.
    """
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_secret_file(path, content):
    """Replace the file ``path`` with ``content`` (str or bytes) atomically: mode 0600, owned by the running user.

    For secrets such as an account file or the WLCG bearer-token file: a temporary file in the same
    directory (create_temp_file), written, fsynced and renamed over ``path``; then the directory is
    fsynced. An existing ``path`` that is not a regular file, or belongs to another user, is left
    alone and StorePermissionError raised (its message holds no secret). Returns ``path``.
    """
    if isinstance(content, str):
        content = content.encode('utf-8')
    path = os.path.abspath(path)
    directory = os.path.dirname(path)

    def refuse(why):
        return StorePermissionError('Cannot write the file %s: %s' % (path, why), path=path)

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise refuse(e.strerror or str(e))
    else:
        if not stat.S_ISREG(st.st_mode):
            raise refuse('it exists and is not a regular file (a symbolic link?); it was left as it is')
        if st.st_uid != os.geteuid():
            raise refuse('it exists and belongs to uid %d, not to the running user (uid %d); it was left as it is'
                         % (st.st_uid, os.geteuid()))
    try:
        fd, tmp = create_temp_file(path)
    except OSError as e:
        raise refuse('cannot create a temporary file in %s: %s' % (directory, e.strerror or e))
    try:
        replace_with_temp_file(fd, tmp, path, content)
    except OSError as e:
        raise refuse(e.strerror or str(e))
    fsync_dir(directory)
    return path


# --- private directories ---------------------------------------------------------------------

def _make_dir(path):
    """Create ``path`` (and a missing parent) 0700; False when another process made it meanwhile."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, DIR_MODE, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return False
    return True


def ensure_private_dir(path, follow_links=True):
    """Make ``path`` a directory of the running user with mode 0700: (created, old_mode).

    A missing directory is created; one with another mode is tightened to 0700, and ``old_mode`` is
    the mode it had (else None). Without ``follow_links`` a symbolic link at ``path`` is refused.
    PrivatePathError (``reason`` 'create', 'link', 'type', 'owner' or 'chmod') when it cannot be one;
    its callers word that for their users.
    """
    lookup = os.stat if follow_links else os.lstat
    created = False
    try:
        st = lookup(path)
    except FileNotFoundError:
        try:
            created = _make_dir(path)
        except OSError as e:
            raise PrivatePathError('Cannot create the directory %s: %s' % (path, e.strerror or e), 'create', path,
                                   strerror=e.strerror or str(e))
        st = lookup(path)
    if stat.S_ISLNK(st.st_mode):
        raise PrivatePathError('The directory %s is a symbolic link.' % path, 'link', path)
    if not stat.S_ISDIR(st.st_mode):
        raise PrivatePathError('%s is not a directory.' % path, 'type', path)
    if st.st_uid != os.geteuid():
        raise PrivatePathError('The directory %s belongs to uid %d, not to the running user (uid %d).'
                               % (path, st.st_uid, os.geteuid()), 'owner', path, uid=st.st_uid)
    mode = stat.S_IMODE(st.st_mode)
    if mode == DIR_MODE:
        return created, None
    try:
        os.chmod(path, DIR_MODE)   # also after mkdir, whose mode the umask filters
    except OSError as e:
        raise PrivatePathError('Cannot set mode 0700 on %s: %s' % (path, e.strerror or e), 'chmod', path,
                               strerror=e.strerror or str(e))
    return created, None if created else mode


# --- locks -----------------------------------------------------------------------------------

def try_flock(fd):
    """Take an exclusive flock on ``fd`` if nobody holds one: True, else False at once."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def wait_for_flock(fd, deadline=None):
    """Take an exclusive flock on ``fd``; wait until ``deadline`` (time.monotonic(); None: forever).

    Returns False when the deadline passed first.
    """
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    delay = 0.002
    while not try_flock(fd):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def _names_file(path, fd):
    """Whether ``path`` still names the file open as ``fd`` (and not one made after an unlink)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def lock_file(path, deadline=None):
    """Hold an exclusive flock on the lock file ``path``: its fd, or None when ``deadline`` passed first.

    The file is created 0600 when missing, never through a symbolic link, and kept; closing the fd
    releases the lock. Its holder may remove it: a waiter that then gets the lock of the removed file
    sees that the path names another file, or none, and locks that one instead.
    PrivatePathError (``reason`` 'open') when the file cannot be opened.
    """
    flags = os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC
    while True:
        try:
            fd = os.open(path, flags, FILE_MODE)
        except OSError as e:
            raise PrivatePathError('Cannot open the lock file %s: %s' % (path, e.strerror or e), 'open', path,
                                   strerror=e.strerror or str(e))
        try:
            locked = wait_for_flock(fd, deadline)
            if locked and _names_file(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if not locked:
            return None
