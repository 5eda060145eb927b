"""The pyfuse3 Operations over a Vfs: translation only (inodes, errno values, thread offload).

Where work runs (the S3QL rule, see STYLE.md):

- on the trio event loop: everything answered from memory — getattr, forget, readdir pages
  (a tree's entries, or a listing taken once at opendir), open, release, readlink, xattrs,
  access, lookups in a tree already decoded (`Vfs.lookup_cached`), reads whose chunks
  are all in the decoded-chunk cache (`FileReader.read_cached`), and SEEK_DATA/SEEK_HOLE
  (`lseek`) in a file of up to `OPEN_IN_THREAD` chunks;
- in worker threads (`trio.to_thread.run_sync` under one `CapacityLimiter`): anything that may
  fetch or decode a blob or touch the store — other lookups (trees, unknown job ids), opendir
  of a tree not decoded or of a listing, reads that miss the cache (`FileReader.read`),
  statfs, lseek in a bigger file, and the trees a node needs when it is rebuilt from its
  row;
- in a worker thread, ahead of the request: the tree of the directory a walk is likely to
  open next, and its first entries' fields (c3fs/fuse/listahead.py).

The inodes the kernel knows are rows of a compact table (c3fs/fuse/inodes.py), not nodes:
a node is rebuilt from its row (parent, index in the parent's tree) when a request needs it.

Opening files costs no request (FUSE_NO_OPEN_SUPPORT): content never changes and a reader
needs no per-open state, so the first OPEN is answered ENOSYS and from then on the kernel opens
files itself, keeps their page cache, and sends neither OPEN nor RELEASE (measured with a
minimal pyfuse3 file system: `cat` of 2,500 small files from the page cache, 0.28 s with the
two requests per file, 0.04 s without). The kernel then reads with file handle 0; the pyfuse3
build from `make` (patches/) hands `read` the inode instead, and the readers are kept per
inode (`readers`). With a stock pyfuse3 (no `READ_INODE_WITHOUT_OPEN`), or with
`C3FS_FUSE_OPEN=1`, files are opened the classic way: one reader per OPEN, dropped at RELEASE.

The first READ of a file (or its OPEN) starts fetching its first chunks (FileReader.start,
the reader's own pool). A first read of a small file (not its LOOKUP: `du` and `find -size`
look files up without reading them) tells `DirectoryReadahead`, which reads the next small
files of the directory in a worker thread; those the kernel already knows are pushed into
its page cache (notify_store) and cost no READ at all, the others wait decoded in the chunk
cache for their READ (see c3fs/fuse/readahead.py).

Sparse files: a push stores a hole as chunks of zeros whose id is known
(c3fs/reader/holes.py). A file's `st_blocks` counts only its other bytes, from the chunk list
its tree entry holds already (a lookup or getattr reads nothing more; a file smaller than one
such chunk is not even looked at), and SEEK_DATA/SEEK_HOLE (`lseek`, the patched pyfuse3)
find its holes: `du` says what it takes, and `cp --sparse=auto` (which asks SEEK_DATA only
of a file whose st_blocks say it is sparse) copies it without reading its holes.

Errors: handlers raise only `pyfuse3.FUSEError`, built in one place (`_fuse_error`) from one
table (`ERRNO`). A missing or corrupt chunk is EIO with one `log.error` line naming the job,
the path and the chunk; anything unexpected is EIO with `log.exception`.

Extended attributes (read-only):

- `user.c3fs.digest` — a stable content id. Files: hex blake3 of the file's bytes, so
  `b3sum FILE` of any copy prints it (kept in the tree since tree version 2; for a file of 2+
  chunks from an older tree it is computed once by reading the file, then remembered);
  directories: the hex id of their tree (a Merkle root over the whole sub-tree).
- `user.c3fs.job` (or `user.c3fs.dataset`) — the job id (dataset name) the node belongs to.
- `user.c3fs.inputs` — on a job's top directory, when its run read inputs: their refs, what
  each resolved to, root ids and mount points, as JSON (as `ls --json` shows them). An xattr,
  not a file: any name inside a job could be one of the job's own files.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3
import msgspec
import pyfuse3
import trio

from c3fs.errors import BlobError, DataError, FormatError, IsADirectory, NotADirectory, NotFound
from c3fs.fuse.inodes import Inodes
from c3fs.fuse.listahead import ListingAhead, plus_fields
from c3fs.fuse.readahead import SMALL_FILE, DirectoryReadahead
from c3fs.memo import LRU
from c3fs.objects.job import DATASET, JOB
from c3fs.objects.tree import (
    DIR,
    FILE,
    LINK,
    RUN,
    EncodedTree,
    Entry,
    PagedTree,
    Shown,
    file_digest,
)
from c3fs.reader import FileReader
from c3fs.reader.trace import Traces
from c3fs.vfs import Node, Vfs, child_inos

# a patched pyfuse3 (patches/) sends a READ's reply given as a list of buffers without joining
REPLY_PARTS = getattr(pyfuse3, "READ_REPLY_PARTS", False)
# ... and lets the kernel send plain READDIR requests (`readdirplus_auto`, `token.plus`)
READDIRPLUS_AUTO = getattr(pyfuse3, "READDIRPLUS_AUTO", False)
# ... and answers a run of a tree's entries in one call, from lists of their fields (no
# EntryAttributes and no call per entry), sparse files' st_blocks among them; None with a
# stock pyfuse3, or a patched one built before it took st_blocks (a reply per entry)
REPLY_MANY = (getattr(pyfuse3, "readdir_reply_many", None)
              if getattr(pyfuse3, "READDIR_REPLY_BLOCKS", False) else None)

log = logging.getLogger(__name__)

CONTENT_TIMEOUT = 3600.0  # a job's tree never changes
LISTING_TIMEOUT = 1.0  # /jobs, /projects/...: new jobs must show up quickly
BLOCK_SIZE = 1 << 20  # st_blksize: `cat` and friends read this much per call
OPEN_IN_THREAD = 4096  # files with more chunks than this are opened in a worker thread
READERS = 64  # readers kept per inode when files are opened without requests (by count:
# a reader holds its file's chunk list; an evicted one is rebuilt by the next READ)
DIGESTS = 4096  # digests of files from version 1 trees, computed by reading them
USER_NAMESPACE = b"user."  # the only xattr namespace the mount has
XATTR_PREFIX = b"user.c3fs."
XATTR_DIGEST = b"user.c3fs.digest"
XATTR_JOB = b"user.c3fs.job"
XATTR_DATASET = b"user.c3fs.dataset"
XATTR_INPUTS = b"user.c3fs.inputs"
# Entries in a directory's first READDIRPLUS reply (see readdir); 0: as many as fit, as
# libfuse does. A small number (16) makes `find` of directories of 1,000 files list names
# only, but `du`, `tar` and `cp -r` (which list a whole directory, then stat each entry), and
# a data loader that lists in one process and opens in others, then cost a LOOKUP per file
# (~45 µs of daemon CPU, against ~2.5 for an entry of a READDIRPLUS; bench/README.md,
# "`find` and `ls -lR` through the mount").
FIRST_PLUS = int(os.environ.get("C3FS_READDIRPLUS_FIRST", "0") or 0)
STATFS_TTL = 10.0  # statfs sums every pack's size (`find`, `df` ask): at most every 10 s
GENERATION_MASK = 0xFFFF_FFFF_FFFF_FFFF
MODE_BITS = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, LINK: stat.S_IFLNK}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class ReadOnly(Exception):
    """A write-type request on the read-only mount."""


class NoAttribute(Exception):
    """An extended attribute the node does not have."""


class NoSuchOffset(Exception):
    """SEEK_DATA or SEEK_HOLE from an offset outside the file, or SEEK_DATA with no data at
    or after it (ENXIO, as lseek(2) says)."""


class BadWhence(Exception):
    """An lseek request of a kind other than SEEK_DATA and SEEK_HOLE (the kernel answers
    the others itself)."""


class NoNamespace(Exception):
    """An xattr namespace the mount does not implement (security.*, system.* ACLs, trusted.*).

    EOPNOTSUPP rather than ENOATTR: `ls -l` then remembers that the file system has no
    SELinux labels or ACLs and stops asking for them, file after file (two requests each).
    """


# STYLE.md rule 2: the one place where errors become errno values (first match wins).
ERRNO: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, errno.ENOENT),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
    (ReadOnly, errno.EROFS),
    (NoAttribute, pyfuse3.ENOATTR),
    (NoNamespace, errno.EOPNOTSUPP),
    (NoSuchOffset, errno.ENXIO),
    (BadWhence, errno.EINVAL),
    (DataError, errno.EIO),  # missing or corrupt chunk: logged with job, path and chunk
    (FormatError, errno.EIO),  # a damaged tree: logged the same way
)
LOGGED = (DataError, FormatError)


def errno_of(exc: BaseException) -> int | None:
    for kind, number in ERRNO:
        if isinstance(exc, kind):
            return number
    return None


def handler(method: Callable) -> Callable:
    """Run a request handler; turn whatever it raises into a FUSEError (never anything else)."""

    @functools.wraps(method)
    async def run(self: Operations, *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise self._fuse_error(exc, method.__name__, args) from None

    return run


@dataclass(slots=True)
class OpenFile:
    node: Node
    reader: FileReader


def opens_without_requests(release: str | None = None) -> bool:
    """Whether files are opened by the kernel alone (see the module docstring): needs the
    patched pyfuse3 and Linux >= 4.19 (older kernels fail an open answered ENOSYS)."""
    if os.environ.get("C3FS_FUSE_OPEN", "") not in ("", "0"):
        return False
    if not getattr(pyfuse3, "READ_INODE_WITHOUT_OPEN", False):
        return False
    return kernel_version(release or os.uname().release) >= (4, 19)


STOCK_NOTICE = (
    "pyfuse3 {version} is a stock build: every file opened on a c3fs mount costs an OPEN and "
    "a RELEASE request to the daemon (reading 10,000 small files from the page cache: ~3 s "
    "instead of 0.2 s). The patched build comes from c3fs's source (a clone or `pip download "
    "--no-binary :all: --no-deps c3fs`): `make pyfuse3 VENV={venv}` (patches/README.md). "
    "Said once (marker: {marker})")


def stock_pyfuse3_notice(marker: str | os.PathLike) -> str | None:
    """The warning that this pyfuse3 lacks c3fs's patch, or None: None when it has it, when
    the patch would not help (C3FS_FUSE_OPEN=1, Linux < 4.19), or when `marker` exists (the
    warning was given once already; this call creates it)."""
    if getattr(pyfuse3, "READ_INODE_WITHOUT_OPEN", False):
        return None
    if os.environ.get("C3FS_FUSE_OPEN", "") not in ("", "0"):
        return None
    if kernel_version(os.uname().release) < (4, 19):
        return None
    try:
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return None
    except OSError:  # no marker: said again next time, rather than never
        pass
    version = getattr(pyfuse3, "__version__", "")
    return STOCK_NOTICE.format(version=version, venv=sys.prefix,
                               marker=os.fspath(marker)).replace("  ", " ")


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as "6.18.44-fc-v669"; (0, 0) if odd."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


class Operations(pyfuse3.Operations):
    """Read-only FUSE requests translated to the Vfs."""

    enable_writeback_cache = False
    supports_dot_lookup = False
    readdirplus_auto = True  # the patched pyfuse3: plain READDIR when names suffice (readdir)

    def __init__(self, vfs: Vfs, threads: int = 16, readahead: int = 8,
                 stateless_open: bool | None = None, traces: Traces | None = None) -> None:
        """`traces`: records the chunks the kernel asks for, per job (c3fs/reader/trace.py)."""
        super().__init__()
        self.traces = traces
        self.stateless_open = opens_without_requests() if stateless_open is None else stateless_open
        self.readers: LRU = LRU(READERS)  # inode -> OpenFile, when opened without OPEN
        self._digests: LRU = LRU(DIGESTS)  # blake3 of a chunk list -> hex digest of the bytes
        self.vfs = vfs
        self.holes = vfs.repo.blobs.holes  # where a sparse file's holes are (st_blocks, lseek)
        self.inodes = Inodes(vfs, vfs.root)
        self.limiter = trio.CapacityLimiter(threads)
        self.readahead = readahead
        self.directory_readahead = DirectoryReadahead(vfs, self.limiter, self._push)
        self.listing_ahead = ListingAhead(vfs, self.limiter, MODE_BITS) if REPLY_MANY else None
        self.uid, self.gid = os.getuid(), os.getgid()
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, tuple[Node, Sequence]] = {}
        self._handles = itertools.count(1)
        self._stored: tuple[float, int] | None = None  # (when, bytes of packs) for statfs

    async def _thread(self, fn: Callable, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _node(self, ino: int) -> Node:
        """The node of a known inode: rebuilt on the loop, trees it needs read in a thread."""
        loaded: dict = {}
        while True:
            node = self.inodes.cached(ino, loaded)
            if isinstance(node, Node):
                return node
            loaded[node] = await self._thread(self.vfs.repo.tree, node, False)

    # attributes ---------------------------------------------------------------------------
    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = generation_of(node)
        attr.entry_timeout, attr.attr_timeout = timeouts_of(node)
        attr.st_mode = node.st_mode
        attr.st_nlink = 1
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_rdev = 0
        attr.st_size = size_of(node)
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (self.holes.blocks(attr.st_size, node.entry.chunks)
                          if node.kind == FILE and node.entry is not None
                          else (attr.st_size + 511) // 512)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        return attr

    def tree_attributes(self) -> pyfuse3.EntryAttributes:
        """Attributes with what every entry of a tree shares; `entry_attributes` fills in the
        rest. readdir reuses one for all its entries: a reply copies them at once."""
        attr = pyfuse3.EntryAttributes()
        attr.entry_timeout = attr.attr_timeout = CONTENT_TIMEOUT
        attr.st_nlink = 1
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_blksize = BLOCK_SIZE
        return attr

    def entry_attributes(self, attr: pyfuse3.EntryAttributes, ino: int,
                         entry: Entry | Shown) -> pyfuse3.EntryAttributes:
        """`attributes` of the node of a tree's entry, made without the node (readdir), in
        `attr` from `tree_attributes`. `_readdir_runs` makes the same fields as lists (keep
        the two in step: tests/test_readdir_runs.py compares them)."""
        attr.st_ino = ino
        kind = entry.kind
        attr.generation = hash(entry.chunks if kind == FILE else entry.target) & GENERATION_MASK
        attr.st_mode = MODE_BITS[kind] | entry.mode
        size = attr.st_size = entry.size if kind == FILE else len(entry.target) if kind == LINK else 0
        attr.st_blocks = (self.holes.blocks(size, entry.chunks) if kind == FILE
                          else (size + 511) // 512)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = entry.mtime_ns
        return attr

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        self.inodes.remember(node)
        return self.attributes(node)

    # names --------------------------------------------------------------------------------
    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        parent = await self._node(parent_inode)
        try:
            node = self.vfs.lookup_cached(parent, name)  # a decoded tree: no thread round trip
            if node is None:
                node = await self._thread(self.vfs.lookup, parent, name)
        except NotFound:
            if parent.ref is None:  # a listing that grows: never cache a miss
                raise
            return negative_entry()  # content never changes: the kernel may cache the miss
        # (no directory readahead here: `du`, `find -size` look files up without reading
        # them; the first READ of a small file starts it, see `_open`)
        if (node.kind == FILE and self.traces is not None and node.entry is not None
                and node.size <= SMALL_FILE):
            self.traces.add(node.ref, node.entry.chunk_ids())  # (read ahead: maybe no READ)
        return self._entry(node)

    @handler
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.readers.discard(self.inodes.forget_many(list(inode_list)))

    @handler
    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        return self.attributes(await self._node(inode))

    @handler
    async def readlink(self, inode: int, ctx=None) -> bytes:
        return self.vfs.readlink(await self._node(inode))

    @handler
    async def access(self, inode: int, mode: int, ctx=None) -> bool:
        await self._node(inode)
        if mode & os.W_OK:
            raise ReadOnly()
        return True

    # directories --------------------------------------------------------------------------
    @handler
    async def opendir(self, inode: int, ctx=None) -> int:
        """A tree's directory keeps its (immutable) tree; others their listing, taken now."""
        node = await self._node(inode)
        if node.tree_id is not None:
            tree = self.vfs.repo.cached_tree(node.tree_id)
            if tree is None:
                tree = await self._thread(self.vfs.repo.tree, node.tree_id, False)
            listing: Sequence = tree  # (entries checked as readdir decodes them)
        else:
            listing = await self._thread(self.vfs.children, node)
        fh = next(self._handles)
        self._dirs[fh] = (node, listing)
        return fh

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries from position `start_id` of the listing taken at opendir; next_id = i + 1.

        READDIRPLUS: every entry reported is a lookup, with its attributes. With the patched
        pyfuse3 the kernel sends it for a directory's first batch and while the application
        stats what it lists (`ls -l`); else a plain READDIR (`find`): names, inode numbers and
        types, no lookups, no rows (`token.plus` False). The first batch may be kept short
        (FIRST_PLUS): the stat of one entry is enough to tell the kernel to go on with
        READDIRPLUS, and a reader that only wants names gets few inodes.

        A tree's entries are decoded `RUN` at a time as a listing shows them (`Listed`, or
        `Shown` with their attributes: not their chunk lists), and make no Node each."""
        parent, listing = self._dirs[fh]
        plus = getattr(token, "plus", True)
        if parent.tree_id is None:
            self._readdir_listing(listing, start_id, token, plus)
            return
        end = len(listing)
        if listing.pages and start_id < end:  # a paged directory: one page
            k = listing.page_at(start_id)  # a call, read in a thread if it is not in memory
            if listing.cached_page(k) is None:
                await self._thread(listing.page, k)
            end = listing.starts[k + 1]
        if plus and start_id == 0 and READDIRPLUS_AUTO and FIRST_PLUS > 0:
            end = min(end, FIRST_PLUS)
        if REPLY_MANY is not None:
            if (self._readdir_runs(parent, listing, start_id, end, token, plus)
                    and end == len(listing) and (start_id < end or end == 0)):
                # the reply holds the listing's end: decode what is likely opened next
                self.listing_ahead.listed(parent, listing)
            return
        if not plus:
            self._readdir_plain(parent, listing, start_id, end, token)
            return
        reply, entry_attributes, attr = (pyfuse3.readdir_reply, self.entry_attributes,
                                         self.tree_attributes())
        i = start_id
        while i < end:  # a run of entries, then their rows at once (no Node per entry)
            entries = listing.listed(i, min(RUN, end - i), True)
            inos = child_inos(parent.key, [entry.name for entry in entries])
            for k, entry in enumerate(entries):
                if not reply(token, entry.name, entry_attributes(attr, inos[k], entry), i + k + 1):
                    self.inodes.remember_children(parent, inos[:k], i)
                    return
            self.inodes.remember_children(parent, inos, i)
            i += len(entries)

    def _readdir_runs(self, parent: Node, tree: EncodedTree | PagedTree, start_id: int,
                      end: int, token: pyfuse3.ReaddirToken, plus: bool) -> bool:
        """readdir of a tree with the patched pyfuse3: a run's fields in lists, answered in
        one call (`readdir_reply_many`, which fills the reply in C), the rows of the entries it
        took added at once; True if the reply took every entry up to `end`. The fields are
        `entry_attributes`'s (`plus_fields`); the shared ones (timeouts, st_nlink, owner,
        st_blksize) come from `tree_attributes`. A directory's runs may have been decoded
        ahead (`ListingAhead`)."""
        reply, bits = REPLY_MANY, MODE_BITS
        attr = self.tree_attributes() if plus else None
        ahead = self.listing_ahead.fields(parent) if plus else None
        i = start_id
        while i < end:
            count = min(RUN, end - i)
            if plus:
                fields = ahead.get(i) if ahead is not None else None
                if fields is None or len(fields[0]) != count:
                    fields = plus_fields(tree, parent.key, i, count, bits, self.holes)
                names, inos = fields[0], fields[1]
                taken = reply(token, *fields[:6], attr, i, blocks=fields[6])
                self.inodes.remember_children(
                    parent, inos if taken == len(inos) else inos[:taken], i)
            else:
                entries = tree.listed(i, count)
                names = [entry.name for entry in entries]
                taken = reply(token, names, child_inos(parent.key, names),
                              [bits[entry.kind] for entry in entries], first_id=i)
            if taken < len(names):
                return False
            i += taken
        return True

    def _readdir_listing(self, listing: Sequence[tuple[bytes, Node]], start_id: int,
                         token: pyfuse3.ReaddirToken, plus: bool) -> None:
        """readdir of a listing outside any tree (/jobs, /projects/...)."""
        reply = pyfuse3.readdir_reply
        for i in range(start_id, len(listing)):
            name, node = listing[i]
            if not reply(token, name, self.attributes(node), i + 1):
                return
            if plus:
                self.inodes.remember(node)

    @staticmethod
    def _readdir_plain(parent: Node, tree: EncodedTree | PagedTree, start_id: int, end: int,
                       token: pyfuse3.ReaddirToken) -> None:
        """A plain READDIR of a tree: one attributes object, only its inode number and type
        sent."""
        attr, reply, modes = pyfuse3.EntryAttributes(), pyfuse3.readdir_reply, MODE_BITS
        i = start_id
        while i < end:
            entries = tree.listed(i, min(RUN, end - i))
            inos = child_inos(parent.key, [entry.name for entry in entries])
            for entry, ino in zip(entries, inos, strict=True):
                attr.st_ino = ino
                attr.st_mode = modes[entry.kind]
                i += 1
                if not reply(token, entry.name, attr, i):
                    return

    @handler
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # files --------------------------------------------------------------------------------
    @handler
    async def open(self, inode: int, flags: int, ctx=None) -> pyfuse3.FileInfo:
        if flags & WRITE_FLAGS:
            raise ReadOnly()
        node = await self._node(inode)
        if node.kind != FILE:
            raise IsADirectory(f"{node.display} is not a regular file")
        if self.stateless_open:
            # From now on the kernel opens files by itself; this open succeeds, too.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh = next(self._handles)
        self._files[fh] = await self._open(node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def _open(self, node: Node) -> OpenFile:
        many = node.entry is not None and len(node.entry.chunks) > 32 * OPEN_IN_THREAD
        reader = (await self._thread(self.vfs.open, node, self.readahead) if many
                  else self.vfs.open(node, self.readahead))
        # ready by the first READ; and a chunk inside a GET fetching ahead already (the bytes
        # it reads over) is taken from it: without this, 21 GETs for 1,000 small files, not 8
        reader.start()
        parent = self._parent(node)
        if parent is not None:
            self.directory_readahead.opened(parent, node)
        return OpenFile(node, reader)

    async def _file(self, fh: int) -> OpenFile:
        """The open file behind a READ: its handle, or its inode when opened without OPEN."""
        if not self.stateless_open:
            return self._files[fh]
        node = await self._node(fh)
        found = self.readers.get(fh)
        if found is None or found.node.entry != node.entry:  # (a path may get new content)
            if node.kind != FILE:
                raise IsADirectory(f"{node.display} is not a regular file")
            found = await self._open(node)
            self.readers.put(fh, found)
        return found

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview | list:
        """The chunks' bytes as views, never copied: a patched pyfuse3 sends a list of them as
        one reply (READ_REPLY_PARTS, see patches/); a stock one gets them joined."""
        found = await self._file(fh)
        reader = found.reader
        if self.traces is not None:
            self.traces.add(found.node.ref, reader.ids_between(off, size))
        parts = reader.read_parts(off, size, cached=True)  # in memory: no thread round trip
        if parts is None:
            parts = await self._thread(reader.read_parts, off, size)
        if len(parts) <= 1:
            return parts[0] if parts else b""
        return parts if REPLY_PARTS else b"".join(parts)

    @handler
    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA and SEEK_HOLE (the patched pyfuse3: patches/README.md), answered from
        the file's chunk list (`FileReader.seek`): a hole is a run of chunks of zeros as a
        push cuts a sparse file's holes, so `cp --sparse=auto` and `tar --sparse` skip them
        instead of reading their zeros. `fh` is the inode when files are opened without
        requests, as for `read`. With a stock pyfuse3 the kernel is answered ENOSYS and
        takes the whole file for data."""
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise BadWhence()
        reader = (await self._file(fh)).reader
        data = whence == os.SEEK_DATA
        found = (await self._thread(reader.seek, offset, data) if len(reader.ids) > OPEN_IN_THREAD
                 else reader.seek(offset, data))  # (~20-40 ns a chunk: 0.1-0.2 ms here)
        if found is None:
            raise NoSuchOffset()
        return found

    @handler
    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    # reading ahead (see c3fs/fuse/readahead.py) -------------------------------------------
    def _push(self, ino: int, content: bytes) -> None:
        """Put a file's content into the kernel's page cache (from a worker thread)."""
        if ino not in self.inodes:  # (a read from a thread: a stale answer only skips a push)
            return  # the kernel does not know it (not listed): nothing to attach pages to
        try:
            pyfuse3.notify_store(ino, 0, content)
        except OSError as exc:
            log.debug("notify_store of inode %d: %s", ino, exc)

    def _parent(self, node: Node) -> Node | None:
        """The directory holding `node`, if the kernel still knows it."""
        parent = node.parent
        return parent if parent is not None and parent.ino in self.inodes else None

    # the file system ----------------------------------------------------------------------
    @handler
    async def statfs(self, ctx=None) -> pyfuse3.StatvfsData:
        now = trio.current_time()
        if self._stored is None or now - self._stored[0] > STATFS_TTL:
            stored = await self._thread(self.vfs.repo.index.stored_bytes)
            self._stored = (now, stored)
        stored = self._stored[1]
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_blocks = (stored + BLOCK_SIZE - 1) // BLOCK_SIZE
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.inodes)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # extended attributes ------------------------------------------------------------------
    @handler
    async def getxattr(self, inode: int, name: bytes, ctx=None) -> bytes:
        node = await self._node(inode)
        if not name.startswith(USER_NAMESPACE):
            raise NoNamespace()
        if name == XATTR_INPUTS and _job_root(node):
            inputs = await self._thread(self._inputs, node)
            if not inputs:
                raise NoAttribute()
            return inputs
        found = xattrs(node) if name.startswith(XATTR_PREFIX) else {}
        if name not in found:
            raise NoAttribute()
        value = found[name]
        if value is None:  # the digest of a file of 2+ chunks from a version 1 tree
            key = blake3.blake3(node.entry.chunks).digest()  # (one 32-byte key per file)
            value = self._digests.get(key)
            if value is None:
                reader = self.vfs.open(node, self.readahead, remember=False)
                value = (await self._thread(reader.digest)).hex().encode()
                self._digests.put(key, value)
        return value

    @handler
    async def listxattr(self, inode: int, ctx=None) -> Sequence[bytes]:
        node = await self._node(inode)
        names = list(xattrs(node))
        if _job_root(node) and await self._thread(self._inputs, node):
            names.append(XATTR_INPUTS)
        return names

    def _inputs(self, node: Node) -> bytes:
        """`user.c3fs.inputs` of a job's root: its record's inputs as JSON (b"": none)."""
        record = self.vfs.repo.record(*node.ref)
        if not record.inputs:
            return b""
        return msgspec.json.encode(record.inputs)

    # everything that would write ----------------------------------------------------------
    @handler
    async def _refuse(self, *args) -> None:
        raise ReadOnly()

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _refuse
    write = create = setxattr = removexattr = _refuse

    # errors -------------------------------------------------------------------------------
    def _fuse_error(self, exc: Exception, op: str, args: tuple) -> pyfuse3.FUSEError:
        number = errno_of(exc)
        if number is None:
            log.exception("unexpected error in %s (%s): answering EIO", op, self._where(op, args))
            return pyfuse3.FUSEError(errno.EIO)
        if isinstance(exc, LOGGED):
            node = self._node_of(op, args)
            job = node.ref[1] if node is not None and node.ref else "-"
            chunk = exc.blob_id if isinstance(exc, BlobError) else None
            log.error("%s failed (EIO): job %s, path %s, chunk %s: %s", op, job,
                      self._where(op, args), chunk.hex() if chunk else "-", exc)
        return pyfuse3.FUSEError(number)

    def _node_of(self, op: str, args: tuple) -> Node | None:
        if not args or not isinstance(args[0], int):
            return None
        if op in ("read", "lseek") and self.stateless_open:
            return self.inodes.find(args[0])
        if op in ("read", "lseek", "release", "flush"):
            handle = self._files.get(args[0])
            return handle.node if handle else None
        if op in ("readdir", "releasedir"):
            return self._dirs.get(args[0], (None, None))[0]
        return self.inodes.find(args[0])

    def _where(self, op: str, args: tuple) -> str:
        node = self._node_of(op, args)
        where = node.display if node is not None else "?"
        if op == "lookup" and len(args) > 1:
            where = where.rstrip("/") + "/" + args[1].decode(errors="replace")
        if op == "read" and len(args) > 2:
            where += f" [offset {args[1]}, {args[2]} bytes]"
        return where


def size_of(node: Node) -> int:
    if node.kind == LINK and node.entry is not None:
        return len(node.entry.target)  # what lstat says of a symlink
    return node.size if node.kind == FILE else 0


def generation_of(node: Node) -> int:
    """The inode's generation: an identity of its content. Inode numbers are hashes of paths,
    so a path can come to hold other content (a job id removed and pushed again); a new
    generation makes the kernel drop the old inode and its cached pages (fuse_iget)."""
    if node.kind == FILE and node.entry is not None:
        key = node.entry.chunks  # (Python caches a bytes object's hash)
    elif node.tree_id is not None:
        key = node.tree_id
    elif node.kind == LINK and node.entry is not None:
        key = node.entry.target
    else:
        return 0
    return hash(key) & GENERATION_MASK


def timeouts_of(node: Node) -> tuple[float, float]:
    """(entry, attr) timeouts. Content never changes; the listings above it do: a job's own
    directory keeps its attributes for long, but its name in /jobs is rechecked (`rm`)."""
    if node.ref is None:
        return LISTING_TIMEOUT, LISTING_TIMEOUT
    if node.is_ref_root:
        return LISTING_TIMEOUT, CONTENT_TIMEOUT
    return CONTENT_TIMEOUT, CONTENT_TIMEOUT


def negative_entry() -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 0
    attr.entry_timeout = CONTENT_TIMEOUT
    return attr


def _job_root(node: Node) -> bool:
    """Whether `node` is a job's top directory (`/jobs/<id>`, or the root of its mount)."""
    return (node.ref is not None and node.ref[0] == JOB and node.tree_id is not None
            and (node.parent is None or node.parent.ref is None))


def xattrs(node: Node) -> dict[bytes, bytes | None]:
    """The extended attributes of a node (see the module docstring)."""
    found: dict[bytes, bytes | None] = {}
    if node.kind == FILE and node.entry is not None:
        digest = file_digest(node.entry)  # None: it takes reading the file (`getxattr`)
        found[XATTR_DIGEST] = None if digest is None else digest.hex().encode()
    elif node.tree_id is not None:
        found[XATTR_DIGEST] = node.tree_id.hex().encode()
    if node.ref is not None:
        kind, name = node.ref
        found[XATTR_DATASET if kind == DATASET else XATTR_JOB] = name.encode()
    return found
