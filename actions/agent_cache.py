"""The SQLite agent kept on the target under a content-addressed path, sent only when missing.

Sending the agent's source with every operation costs ~70 KB on the wire and a compile on
the target each time. Instead the agent's files (a small package) are installed once under
``<cache>/agent-<sha256>/`` (``<cache>`` is ``$XDG_CACHE_HOME/rollback-bot``, by default
``~/.cache/rollback-bot``), byte-compiled there, and every operation runs a short bootstrap::

    python3 -I -c '<bootstrap>' <op> <params|->

The bootstrap re-hashes the installed files and checks the result against the sha256 in its
own text before importing them (a file changed on the target, a directory other users may
write, or a missing install all answer ``kind: agent_missing``, having run nothing). Then
``run_agent`` sends the bundle once (on stdin, to an installer that checks the same sha256,
writes a private temporary directory and renames it into place) and runs the operation
again. A target where nothing can be installed (no writable cache) gets the whole bundle
with each operation (``inline_source``, its modules imported from memory); that is logged
once per transport.

The bytes each transport was sent and how often the bundle went are counted per transport
(``shipping(transport)``), so tests and benchmarks can show the agent crossed the wire once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shlex
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from actions.transport import ShellResult, Transport

log = logging.getLogger(__name__)

#: The package name of the agent on the target.
PACKAGE = "rollback_bot_agent"
#: Exit status and kind of a bootstrap that found no valid install.
MISSING_STATUS = 3
MISSING_KIND = "agent_missing"
#: Where the install goes when no directory is given: resolved on the target.
DEFAULT_DIR = ""

#: The agent's files: (path under the install, bytes), in the order they are hashed; the
#: package ``PACKAGE`` with a ``main(argv)`` in its ``__init__``.
Bundle = tuple[tuple[str, bytes], ...]


def bundle_sha256(files: Bundle) -> str:
    """sha256 over every (name, size, bytes) in order: the install's content address."""
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode("utf-8") + b"\0" + str(len(data)).encode("ascii") + b"\0" + data)
    return h.hexdigest()


# Both snippets run on the target's python3 (3.9+, standard library only). ``_DIR`` resolves
# the cache directory there: the one given, or $XDG_CACHE_HOME (default ~/.cache)/rollback-bot.
_DIR = (
    "import hashlib,json,os,sys\n"
    "G={dir!r}\n"
    "B=os.path.expanduser(G) if G else os.path.join(os.environ.get('XDG_CACHE_HOME') or "
    "os.path.expanduser('~/.cache'),'rollback-bot')\n"
    "D=os.path.join(B,'agent-'+{sha!r})\n"
    "N={names!r}\n"
    "def H(root):\n"
    " h=hashlib.sha256()\n"
    " for n in N:\n"
    "  with open(os.path.join(root,n),'rb') as f:b=f.read()\n"
    "  h.update(n.encode()+b'\\0'+str(len(b)).encode()+b'\\0'+b)\n"
    " return h.hexdigest()\n"
    "def OK(root):\n"
    " try:\n"
    "  for p in [root]+[os.path.join(root,d) for d in {dirs!r}]:\n"
    "   s=os.stat(p)\n"
    "   if s.st_uid!=os.getuid() or s.st_mode&0o022:return False\n"
    "  return H(root)=={sha!r}\n"
    " except OSError:return False\n"
)

_BOOTSTRAP = (
    "if not OK(D):\n"
    " sys.stdout.write(json.dumps({{'ok':False,'op':sys.argv[1] if len(sys.argv)>1 else '',"
    "'kind':{missing!r},'error':'no valid agent at '+D}})+'\\n');sys.exit({status})\n"
    "sys.path.insert(0,D)\n"
    "import {package} as A\n"
    "sys.exit(A.main(sys.argv[1:]))\n"
)

_INSTALL = (
    "import base64,py_compile,shutil,tempfile\n"
    "os.umask(0o077)\n"
    "def done(ok,**kw):\n"
    " sys.stdout.write(json.dumps(dict(ok=ok,op='install_agent',**kw))+'\\n');sys.exit(0 if ok else 2)\n"
    "if OK(D):done(True,result={{'path':D,'installed':False}})\n"
    "files=json.loads(sys.stdin.read())\n"
    "try:\n"
    " os.makedirs(B,mode=0o700,exist_ok=True)\n"
    " T=tempfile.mkdtemp(prefix='.agent-',dir=B)\n"
    "except OSError as e:done(False,kind='no_cache',error='cannot create %s: %s'%(B,e))\n"
    "try:\n"
    " for n in N:\n"
    "  p=os.path.join(T,n);os.makedirs(os.path.dirname(p),mode=0o700,exist_ok=True)\n"
    "  with open(p,'wb') as f:f.write(base64.b64decode(files[n]))\n"
    " if H(T)!={sha!r}:done(False,kind='hash_mismatch',error='the agent bundle arrived damaged')\n"
    " for n in N:\n"
    "  if n.endswith('.py'):py_compile.compile(os.path.join(T,n),doraise=True,"
    "invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)\n"
    " try:os.rename(T,D)\n"
    " except OSError:\n"
    "  if not OK(D):\n"
    "   shutil.rmtree(D,ignore_errors=True);os.rename(T,D)\n"
    "finally:\n"
    " shutil.rmtree(T,ignore_errors=True)\n"
    "if OK(D):done(True,result={{'path':D,'installed':True}})\n"
    "done(False,kind='no_cache',error='the installed agent at %s did not verify'%D)\n"
)


# Runs the bundle from memory: an import hook serves its modules (``M``: {name: [file, source,
# is_package]}), so the package's relative imports work as they do installed.
_INLINE = (
    "import base64,importlib.abc,importlib.util,json,sys,zlib\n"
    "M=json.loads(zlib.decompress(base64.b64decode('{packed}')))\n"
    "class L(importlib.abc.MetaPathFinder,importlib.abc.Loader):\n"
    " def find_spec(self,name,path=None,target=None):\n"
    "  f=M.get(name)\n"
    "  return None if f is None else importlib.util.spec_from_loader(name,self,origin=f[0],is_package=f[2])\n"
    " def create_module(self,spec):return None\n"
    " def exec_module(self,module):\n"
    "  f=M[module.__name__];exec(compile(f[1],f[0],'exec'),module.__dict__)\n"
    "sys.meta_path.insert(0,L())\n"
    "import {package} as A\n"
    "sys.exit(A.main(sys.argv[1:]))\n"
)


def _head(sha: str, names: list[str], agent_dir: str) -> str:
    dirs = sorted({n.rsplit("/", 1)[0] for n in names if "/" in n})
    return _DIR.format(dir=agent_dir, sha=sha, names=names, dirs=dirs)


def bootstrap_source(sha: str, names: list[str], agent_dir: str = DEFAULT_DIR) -> str:
    """The ``-c`` text that checks the install at ``agent_dir`` (default: the cache) and runs it."""
    return _head(sha, names, agent_dir) + _BOOTSTRAP.format(
        missing=MISSING_KIND, status=MISSING_STATUS, package=PACKAGE)


def install_source(sha: str, names: list[str], agent_dir: str = DEFAULT_DIR) -> str:
    """The ``-c`` text that installs the bundle read from stdin (JSON of base64 files)."""
    return _head(sha, names, agent_dir) + _INSTALL.format(sha=sha)


def inline_source(files: Bundle) -> str:
    """The ``-c`` text that carries the whole bundle, zlib-compressed in base64, and runs it
    with nothing written on the target (where nothing can be installed)."""
    modules: dict[str, list[object]] = {}
    for name, data in files:
        stem = name.removesuffix(".py").replace("/", ".")
        is_package = stem.endswith(".__init__")
        modules[stem.removesuffix(".__init__")] = [f"<rollback-bot-agent>/{name}", data.decode("utf-8"), is_package]
    packed = base64.b64encode(zlib.compress(json.dumps(modules).encode("ascii"), 9)).decode("ascii")
    return _INLINE.format(packed=packed, package=PACKAGE)


@dataclass
class Shipping:
    """What one transport was sent for the agent: uploads of the bundle and bytes in all."""

    uploads: int = 0
    bytes_sent: int = 0
    operations: int = 0
    #: True once an install failed on this target: the source then goes with every operation.
    inline: bool = False
    installed: str = ""


_SHIPPING: weakref.WeakKeyDictionary[Transport, Shipping] = weakref.WeakKeyDictionary()


def shipping(transport: Transport) -> Shipping:
    """The counters of ``transport`` (made on first use)."""
    found = _SHIPPING.get(transport)
    if found is None:
        found = _SHIPPING[transport] = Shipping()
    return found


def is_missing(result: ShellResult) -> bool:
    """True when the bootstrap found no valid install (and ran nothing)."""
    if result.exit_status != MISSING_STATUS:
        return False
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                return False
            return isinstance(doc, dict) and doc.get("kind") == MISSING_KIND and doc.get("ok") is False
    return False


async def _send(transport: Transport, command: str, stdin: str | None, *, timeout: float,
                cwd: str | None) -> ShellResult:
    sent = shipping(transport)
    sent.bytes_sent += len(command.encode()) + (len(stdin.encode()) if stdin is not None else 0)
    return await transport.run(command, timeout=timeout, cwd=cwd, stdin=stdin)


async def install(transport: Transport, files: Bundle, *, python: str, agent_dir: str = DEFAULT_DIR,
                  timeout: float = 60.0, cwd: str | None = None) -> bool:
    """Send the bundle and install it on the target; False (and inline from now on) if it cannot be."""
    sha = bundle_sha256(files)
    names = [n for n, _ in files]
    payload = json.dumps({n: base64.b64encode(d).decode("ascii") for n, d in files})
    command = " ".join([shlex.quote(python), "-I", "-c", shlex.quote(install_source(sha, names, agent_dir))])
    sent = shipping(transport)
    sent.uploads += 1
    result = await _send(transport, command, payload + "\n", timeout=timeout, cwd=cwd)
    doc = _last_json(result.stdout)
    if result.exit_status == 0 and doc.get("ok") is True:
        info = doc.get("result")
        sent.installed = str(info.get("path", "")) if isinstance(info, dict) else ""
        return True
    sent.inline = True
    log.warning("cannot keep the SQLite agent on %s (%s); its source goes with every operation",
                getattr(transport, "name", "the target"),
                doc.get("error") or (result.stderr.strip()[-300:] or f"exit status {result.exit_status}"))
    return False


def _last_json(stdout: str) -> dict[str, object]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return {}


def bootstrap(files: Bundle, agent_dir: str = DEFAULT_DIR) -> str:
    """The bootstrap's ``-c`` text for the bundle ``files`` installed under ``agent_dir``."""
    return bootstrap_source(bundle_sha256(files), [n for n, _ in files], agent_dir)


async def run_agent(transport: Transport, files: Bundle, cached: tuple[str, str | None],
                    inline: Callable[[], tuple[str, str | None]], *,
                    python: str, agent_dir: str, timeout: float, cwd: str | None) -> ShellResult:
    """Run an operation with the installed agent, installing it first when the target lacks it.

    ``cached`` is (command, stdin) for the bootstrap; ``inline`` makes them with the whole source.
    """
    sent = shipping(transport)
    sent.operations += 1
    if sent.inline:
        return await _send(transport, *inline(), timeout=timeout, cwd=cwd)
    result = await _send(transport, *cached, timeout=timeout, cwd=cwd)
    if not is_missing(result):
        return result
    if not await install(transport, files, python=python, agent_dir=agent_dir, timeout=max(timeout, 30.0), cwd=cwd):
        return await _send(transport, *inline(), timeout=timeout, cwd=cwd)
    return await _send(transport, *cached, timeout=timeout, cwd=cwd)
