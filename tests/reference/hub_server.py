"""A local stand-in for the Hugging Face Hub's upload HTTP API (and enough of the download API), for tests.

peftrain pushes a training output folder to the Hub the way transformers' Trainer.push_to_hub does. Tests cannot
talk to huggingface.co, so this server speaks the same protocol on 127.0.0.1 and is strict where the real Hub is
strict (and in a few places stricter, to catch client bugs early): a client that gets through it should get
through the Hub's LFS upload path. It was written against what huggingface_hub 2.4.0's HfApi sends
(hf_api.py create_repo / whoami / upload_folder / create_commit, _commit_api.py, lfs.py, file_download.py,
_snapshot_download.py), with Xet disabled (HF_HUB_DISABLE_XET=1): only the git-lfs "basic" transfer is offered.

Usage:
    python hub_server.py ROOT --token TOKEN [--user peftrain-test] [--ignore-stdin] [--verbose]

It binds 127.0.0.1 on a free port, prints exactly one line {"endpoint": "http://127.0.0.1:PORT"} to stdout, and
serves until killed or until its stdin reaches EOF (so a test that drops the pipe ends it; --ignore-stdin turns
that off, for running it by hand with stdin on /dev/null).

Storage under ROOT:
    repos/<org>/<name>/<path>   the files of each repo's head commit (model repos only), full content
    lfs/<sha256>                uploaded LFS blobs
    objects/<sha256>            content of regular (non-LFS) files of every commit, so old revisions resolve
    meta/<org>/<name>.json      {"private": bool, "createdAt": ...} of each created repo
    log.jsonl                   one line per commit:
                                  {"repo", "commit", "summary", "description",
                                   "files": [{"path", "mode": "regular"|"lfs", "sha256", "size"}],
                                   "deleted": [path, ...] (only when the commit deletes)}
                                and one line per refused request: {"refused": "<METHOD> <path>", "status", "why"}
A server restarted on the same ROOT reloads meta/ and log.jsonl.

Endpoints (auth = Authorization: Bearer TOKEN; reads are anonymous for public repos, but a token sent must be valid):
    GET  /api/whoami-v2                                      auth
    POST /api/validate-yaml                                  auth  (huggingface_hub checks README.md front matter)
    POST /api/repos/create                                   auth  200, or 409 {"error", "url"} when it exists
    POST /api/models/{org}/{name}/preupload/{rev}            auth  -> uploadMode per file
    POST /{org}/{name}.git/info/lfs/objects/batch            auth  git-lfs batch, "basic" transfer only
    PUT  /lfs-upload/{oid}?upload_token=...                  the upload token the batch gave (no Bearer)
    POST /lfs-verify                                         auth
    POST /api/models/{org}/{name}/commit/{rev}               auth  NDJSON commit
    GET  /api/models/{org}/{name}[/revision/{rev}]           read  model info (sha, siblings)
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]        read  ?recursive=true
    HEAD/GET /{org}/{name}/resolve/{rev}/{path}              read  file bytes + X-Repo-Commit, ETag, X-Linked-*
Only the branch "main" exists (reads also take a commit sha); pull requests (create_pr=1) are refused.
"""
import argparse
import base64
import binascii
import fnmatch
import hashlib
import json
import os
import re
import secrets
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# The Hub's default .gitattributes for a new repo: paths matching these go through LFS.
LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
    "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
]
REGULAR_MAX_SIZE = 10 * 1024 * 1024  # larger files must go through LFS
SAMPLE_SIZE = 512  # the preupload "sample" is the first 512 bytes of the file
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
# Repo names as the Hub accepts them (huggingface_hub's validate_repo_id, plus its "--"/".." rule).
REPO_PART = re.compile(r"^(?!-)(?!.*--)(?!.*\.\.)[\w.-]{1,96}(?<![-.])$")
DEFAULT_BRANCH = "main"


# ---------------------------------------------------------------- protocol rules


def upload_mode(path, size, sample):
    """"lfs" or "regular", the way the Hub answers preupload for a repo with the default .gitattributes."""
    if is_lfs_path(path) or size > REGULAR_MAX_SIZE or b"\x00" in sample:
        return "lfs"
    return "regular"


def is_lfs_path(path):
    # .gitattributes semantics: a pattern without "/" matches the basename at any depth; one with "/" is
    # anchored at the repo root ("saved_model/**/*" = anything below a top-level saved_model/).
    base = path.rsplit("/", 1)[-1]
    for pattern in LFS_PATTERNS:
        if "/" in pattern:
            if path.startswith(pattern.split("/", 1)[0] + "/"):
                return True
        elif fnmatch.fnmatchcase(base, pattern):
            return True
    return False


def path_problem(path):
    """Why a path in a repo is refused, or None. The Hub rejects absolute paths, "."/".." segments and .git/."""
    if not isinstance(path, str) or path == "":
        return "path must be a non-empty string"
    if path.startswith("/") or "\\" in path:
        return f"path {path!r} must be relative and use '/'"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"path {path!r} has an empty, '.' or '..' segment"
    if any(p in (".git", ".cache") for p in parts):
        return f"path {path!r} is under a forbidden folder (.git or .cache)"
    return None


def git_blob_sha1(data):
    """The git object id of a blob: what the Hub calls a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(oid, size):
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def iso_now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


class HubError(Exception):
    """A refused request. error_code goes to the X-Error-Code header, which huggingface_hub maps to typed
    errors (RepoNotFound -> RepositoryNotFoundError, RevisionNotFound, EntryNotFound)."""

    def __init__(self, status, why, error_code=None, error_message=None, extra=None, headers=None):
        super().__init__(why)
        self.status, self.why, self.extra = status, why, extra or {}
        self.headers = dict(headers or {})
        if error_code:
            self.headers["X-Error-Code"] = error_code
        if error_message:
            self.headers["X-Error-Message"] = error_message


# ---------------------------------------------------------------- state


@dataclass
class Entry:
    path: str
    mode: str  # "regular" | "lfs"
    sha256: str
    size: int

    def blob_oid(self, store):
        # The tree's "oid" is the git blob id: of the content for a regular file, of the pointer for LFS.
        if self.mode == "lfs":
            return git_blob_sha1(lfs_pointer(self.sha256, self.size))
        return git_blob_sha1(store.read_content(self))


@dataclass
class Commit:
    sha: str
    summary: str
    date: str
    tree: dict  # path -> Entry


@dataclass
class Repo:
    id: str
    private: bool
    created_at: str
    commits: list = field(default_factory=list)  # oldest first; [0] is the server-made initial commit

    @property
    def head(self):
        return self.commits[-1]


class Store:
    def __init__(self, root, user):
        self.root, self.user = root, user
        self.lock = threading.RLock()
        self.repos = {}
        self.pending_uploads = {}  # upload token -> (oid, size), handed out by the LFS batch endpoint
        for sub in ("repos", "lfs", "objects", "meta"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        self._load()

    # -- persistence

    def _load(self):
        meta_root = os.path.join(self.root, "meta")
        for org in sorted(os.listdir(meta_root)):
            for fname in sorted(os.listdir(os.path.join(meta_root, org))):
                with open(os.path.join(meta_root, org, fname)) as f:
                    meta = json.load(f)
                repo_id = f"{org}/{fname[:-len('.json')]}"
                self.repos[repo_id] = self._new_repo(repo_id, meta["private"], meta["createdAt"])
        log = os.path.join(self.root, "log.jsonl")
        if os.path.exists(log):
            with open(log) as f:
                for line in f:
                    rec = json.loads(line)
                    if "commit" in rec and rec["repo"] in self.repos:
                        repo = self.repos[rec["repo"]]
                        tree = dict(repo.head.tree)
                        for p in rec.get("deleted", []):
                            tree.pop(p, None)
                        for fi in rec["files"]:
                            tree[fi["path"]] = Entry(fi["path"], fi["mode"], fi["sha256"], fi["size"])
                        repo.commits.append(Commit(rec["commit"], rec["summary"], rec.get("date", ""), tree))

    def _new_repo(self, repo_id, private, created_at):
        # Like the Hub, a new repo has one commit already (the Hub's holds .gitattributes; this one is empty,
        # so that a downloaded snapshot holds exactly the pushed files).
        initial = hashlib.sha1(f"initial commit of {repo_id}".encode()).hexdigest()
        return Repo(repo_id, private, created_at, [Commit(initial, "initial commit", created_at, {})])

    def log(self, record):
        with self.lock, open(os.path.join(self.root, "log.jsonl"), "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    # -- repos

    def get_repo(self, repo_id):
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", error_code="RepoNotFound")
        return repo

    def create_repo(self, repo_id, private):
        with self.lock:
            if repo_id in self.repos:
                return None
            repo = self._new_repo(repo_id, private, iso_now())
            org, name = repo_id.split("/")
            os.makedirs(os.path.join(self.root, "meta", org), exist_ok=True)
            with open(os.path.join(self.root, "meta", org, name + ".json"), "w") as f:
                json.dump({"private": private, "createdAt": repo.created_at}, f)
            os.makedirs(os.path.join(self.root, "repos", org, name), exist_ok=True)
            self.repos[repo_id] = repo
            return repo

    def resolve(self, repo, revision):
        """The commit a revision names: the branch "main" or a full commit sha of this repo."""
        if revision == DEFAULT_BRANCH:
            return repo.head
        for commit in repo.commits:
            if commit.sha == revision:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")

    # -- blobs

    def lfs_path(self, oid):
        return os.path.join(self.root, "lfs", oid)

    def lfs_size(self, oid):
        p = self.lfs_path(oid)
        return os.path.getsize(p) if os.path.exists(p) else None

    def read_content(self, entry):
        sub = "lfs" if entry.mode == "lfs" else "objects"
        with open(os.path.join(self.root, sub, entry.sha256), "rb") as f:
            return f.read()

    def write_atomic(self, path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    # -- commits

    def commit(self, repo, summary, description, parent, files, deleted):
        """files: list of (Entry, content bytes or None for LFS). Returns the new commit sha."""
        with self.lock:
            head = repo.head
            if parent is not None and not head.sha.startswith(parent):
                raise HubError(412, f"parentCommit {parent} is not the head of {DEFAULT_BRANCH} ({head.sha})")
            tree = dict(head.tree)
            for p in deleted:
                if p.endswith("/"):  # deletedFolder
                    gone = [q for q in tree if q.startswith(p)]
                else:
                    gone = [p] if p in tree else []
                if not gone:
                    raise HubError(404, f"A file with this name doesn't exist: {p}", error_code="EntryNotFound")
                for q in gone:
                    del tree[q]
            for entry, _ in files:
                tree[entry.path] = entry
            check_tree_shape(tree)
            record_files = [{"path": e.path, "mode": e.mode, "sha256": e.sha256, "size": e.size} for e, _ in files]
            sha = hashlib.sha1(json.dumps(
                {"parent": head.sha, "summary": summary, "description": description,
                 "files": record_files, "deleted": deleted}, sort_keys=True).encode()).hexdigest()
            date = iso_now()
            org, name = repo.id.split("/")
            work = os.path.join(self.root, "repos", org, name)
            for p in deleted:
                for q in [q for q in head.tree if q == p or (p.endswith("/") and q.startswith(p))]:
                    if os.path.exists(os.path.join(work, q)):
                        os.remove(os.path.join(work, q))
            for entry, content in files:
                if content is None:
                    content = self.read_content(entry)
                else:
                    self.write_atomic(os.path.join(self.root, "objects", entry.sha256), content)
                self.write_atomic(os.path.join(work, entry.path), content)
            repo.commits.append(Commit(sha, summary, date, tree))
            record = {"repo": repo.id, "commit": sha, "summary": summary, "description": description,
                      "date": date, "files": record_files}
            if deleted:
                record["deleted"] = deleted
            self.log(record)
            return sha


def check_tree_shape(tree):
    """A path cannot be both a file and a folder."""
    for p in tree:
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in tree:
                raise HubError(422, f"{p!r} is below {'/'.join(parts[:i])!r}, which is a file")


# ---------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response carries Content-Length
    server_version = "hub-stand-in/1"
    store: Store = None
    token: str = None
    verbose = False

    # Routes are matched on the raw (still percent-encoded) path; captured groups are unquoted afterwards.
    # huggingface_hub quotes the revision with safe="" ("refs/pr/1" -> "refs%2Fpr%2F1") and the file path
    # of /resolve/ with "/" kept.
    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/models/(?P<ns>[^/]+)/(?P<name>[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", r"/api/models/(?P<ns>[^/]+)/(?P<name>[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", r"/api/models/(?P<ns>[^/]+)/(?P<name>[^/]+)(?:/revision/(?P<rev>[^/]+))?", "model_info"),
        ("GET", r"/api/models/(?P<ns>[^/]+)/(?P<name>[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", r"/(?P<ns>[^/]+)/(?P<name>[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<oid>[^/]+)", "lfs_upload"),
        ("POST", r"/lfs-verify", "lfs_verify"),
        ("GET", r"/(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", r"/(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
    COMPILED = [(m, re.compile(p + "$"), h) for m, p, h in ROUTES]

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("hub_server: " + (fmt % args) + "\n")

    def do_GET(self):
        self.dispatch("GET")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    # -- plumbing

    @property
    def endpoint(self):
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def dispatch(self, method):
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        self._body = None
        try:
            for m, rx, handler in self.COMPILED:
                match = rx.match(url.path)
                if match and m == method:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, "h_" + handler)(**args)
                    return
            raise HubError(404, f"no such endpoint: {method} {url.path}")
        except HubError as e:
            self.refuse(method, e)
        except Exception as e:  # a server bug: answer 500 (huggingface_hub retries those) and say so
            traceback.print_exc()
            self.refuse(method, HubError(500, f"internal error: {e!r}"))

    def refuse(self, method, e):
        self.store.log({"refused": f"{method} {self.path}", "status": e.status, "why": e.why})
        # Read (and drop) any body the client sent, so the keep-alive connection stays in sync.
        try:
            self.body()
        except HubError:
            self.close_connection = True
        self.send_json(e.status, {"error": e.why, **e.extra}, e.headers)

    def send_json(self, status, obj, headers=None, content_type="application/json; charset=utf-8"):
        self.send_bytes(status, json.dumps(obj).encode(), content_type, headers)

    def send_bytes(self, status, data, content_type, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))  # for HEAD too: the size of what GET sends
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def body(self):
        """The request body, with Content-Length or chunked transfer encoding."""
        if self._body is not None:
            return self._body
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537).strip()
                try:
                    size = int(line.split(b";")[0], 16)
                except ValueError:
                    raise HubError(400, f"bad chunk size line {line[:40]!r}")
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            self._body = b"".join(chunks)
        else:
            length = self.headers.get("Content-Length")
            if length is None:
                self._body = b""
            elif not length.isdigit():
                raise HubError(400, f"bad Content-Length {length!r}")
            else:
                self._body = self.rfile.read(int(length))
        return self._body

    def json_body(self, *media_types):
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in media_types:
            raise HubError(400, f"Content-Type must be {' or '.join(media_types)}, got {ctype!r}")
        try:
            obj = json.loads(self.body())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HubError(400, f"body is not JSON: {e}")
        if not isinstance(obj, dict):
            raise HubError(400, "body must be a JSON object")
        return obj

    def no_query(self, allowed=()):
        extra = sorted(set(self.query) - set(allowed))
        if extra:
            raise HubError(400, f"unexpected query parameters {extra}")

    # -- auth

    def bearer(self):
        """The token of the Authorization header: None when there is none, 401 when it is not ours."""
        auth = self.headers.get("Authorization")
        if auth is None:
            return None
        if not auth.startswith("Bearer ") or not secrets.compare_digest(auth[len("Bearer "):], self.token):
            # This exact message makes huggingface_hub raise a plain HfHubHTTPError, not RepositoryNotFoundError.
            raise HubError(401, "Invalid credentials in Authorization header",
                           error_message="Invalid credentials in Authorization header")
        return auth[len("Bearer "):]

    def require_auth(self):
        if self.bearer() is None:
            raise HubError(401, "You must be authenticated to access this endpoint (Authorization: Bearer TOKEN)")

    def writable_repo(self, ns, name):
        """Auth, then namespace (403), then existence (404) of a repo the client wants to write to."""
        self.require_auth()
        if ns != self.store.user:
            raise HubError(403, f"You don't have the rights to write to {ns}/{name} (you are {self.store.user})",
                           error_message=f"You don't have the rights to write to {ns}/{name}")
        return self.store.get_repo(f"{ns}/{name}")

    def readable_repo(self, ns, name):
        # Reads work anonymously (public repos), but a token that is sent must be valid, as on the Hub.
        authed = self.bearer() is not None
        repo = self.store.get_repo(f"{ns}/{name}")
        if repo.private and not authed:
            raise HubError(401, f"Repository {repo.id} not found", error_code="RepoNotFound")
        return repo

    # -- account

    def h_whoami(self):
        self.require_auth()
        self.no_query()
        user = self.store.user
        self.send_json(200, {
            "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user, "fullname": user,
            "email": f"{user}@example.invalid", "emailVerified": True, "canPay": False, "isPro": False,
            "periodEnd": None, "avatarUrl": "", "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write",
                                                              "createdAt": "2024-01-01T00:00:00.000Z"}},
        })

    def h_validate_yaml(self):
        # huggingface_hub posts README.md here before committing it (client-side pre-check, not part of the
        # commit protocol). Only the front-matter delimiters are checked: the stdlib has no YAML parser.
        self.require_auth()
        body = self.json_body("application/json")
        content = body.get("content")
        if not isinstance(content, str) or body.get("repoType") not in ("model", "dataset", "space", "kernel"):
            raise HubError(400, "expected {\"content\": str, \"repoType\": str}")
        lines = content.replace("\r\n", "\n").split("\n")
        if lines and lines[0].strip() == "---" and not any(l.strip() == "---" for l in lines[1:]):
            self.send_json(400, {"errors": [{"message": "metadata block is not closed by '---'"}], "warnings": []})
            return
        self.send_json(200, {"errors": [], "warnings": []})

    # -- repo creation

    def h_create_repo(self):
        self.require_auth()
        self.no_query()
        body = self.json_body("application/json")
        allowed = {"name", "organization", "private", "visibility", "type", "resourceGroupId", "region"}
        if set(body) - allowed:
            raise HubError(400, f"unexpected fields {sorted(set(body) - allowed)}")
        name, org = body.get("name"), body.get("organization")
        if not isinstance(name, str) or not REPO_PART.match(name):
            raise HubError(400, f"invalid repo name {name!r}")
        if org is not None and not isinstance(org, str):
            raise HubError(400, "organization must be a string or null")
        if body.get("type", "model") != "model":
            raise HubError(400, f"this stand-in only hosts model repos, not {body.get('type')!r}")
        # huggingface_hub 2.4.0 sends "visibility" ("public"/"private"); older clients send "private": bool.
        private = body.get("private", False)
        visibility = body.get("visibility")
        if visibility is not None:
            if visibility not in ("public", "private"):
                raise HubError(400, f"invalid visibility {visibility!r}")
            private = visibility == "private"
        if not isinstance(private, bool):
            raise HubError(400, "private must be a boolean")
        ns = org or self.store.user  # huggingface_hub sends "organization": null for a bare name
        repo_id = f"{ns}/{name}"
        url = f"{self.endpoint}/{repo_id}"
        if ns != self.store.user:
            raise HubError(403, f"You don't have the rights to create a model under the namespace {ns!r}",
                           error_message=f"You don't have the rights to create a model under {ns}")
        if self.store.create_repo(repo_id, private) is None:
            # huggingface_hub's exist_ok reads d["url"] from this very 409 body.
            raise HubError(409, "You already created this model repo", extra={"url": url})
        self.send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    # -- upload: preupload, LFS batch, LFS PUT, verify, commit

    def branch(self, repo, rev):
        """Writes go to a branch; only "main" exists here. create_pr is not supported."""
        if self.query.get("create_pr", ["0"]) != ["0"]:
            raise HubError(422, "pull requests (create_pr) are not supported by this stand-in")
        if rev != DEFAULT_BRANCH:
            raise HubError(404, f"Invalid rev id: {rev} (only the branch {DEFAULT_BRANCH!r} exists)",
                           error_code="RevisionNotFound")
        return repo.head

    def h_preupload(self, ns, name, rev):
        repo = self.writable_repo(ns, name)
        self.no_query(allowed=("create_pr",))
        head = self.branch(repo, rev)
        body = self.json_body("application/json")
        if set(body) - {"files", "gitIgnore"}:
            raise HubError(400, f"unexpected fields {sorted(set(body) - {'files', 'gitIgnore'})}")
        if "gitIgnore" in body and not isinstance(body["gitIgnore"], str):
            raise HubError(400, "gitIgnore must be a string")
        files = body.get("files")
        if not isinstance(files, list) or not files:
            raise HubError(400, "files must be a non-empty list")
        answer = []
        for f in files:
            path, size, sample = self.check_preupload_file(f)
            mode = upload_mode(path, size, sample)
            # "oid" is the remote file's current oid (sha256 for LFS, git blob sha1 for regular), null when
            # absent: huggingface_hub skips files whose local oid equals it.
            current = head.tree.get(path)
            oid = None
            if current is not None:
                oid = current.sha256 if current.mode == "lfs" else current.blob_oid(self.store)
            answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self.send_json(200, {"files": answer, "commitOid": head.sha})

    def check_preupload_file(self, f):
        if not isinstance(f, dict) or set(f) != {"path", "size", "sample"}:
            raise HubError(400, f"each file must be exactly {{path, size, sample}}, got {f!r:.200}")
        path, size, sample = f["path"], f["size"], f["sample"]
        if path_problem(path):
            raise HubError(400, path_problem(path))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise HubError(400, f"{path}: size must be a non-negative integer")
        try:
            raw = base64.b64decode(sample, validate=True) if isinstance(sample, str) else None
        except binascii.Error:
            raw = None
        if raw is None:
            raise HubError(400, f"{path}: sample must be base64")
        if len(raw) != min(size, SAMPLE_SIZE):
            raise HubError(400, f"{path}: sample must be the first min(size, 512) = {min(size, SAMPLE_SIZE)} "
                                f"bytes, got {len(raw)}")
        return path, size, raw

    def h_lfs_batch(self, ns, name):
        repo = self.writable_repo(ns, name)
        self.no_query()
        # git-lfs batch API (https://github.com/git-lfs/git-lfs/blob/main/docs/api/batch.md).
        accept = self.headers.get("Accept", "")
        if "application/vnd.git-lfs+json" not in accept:
            raise HubError(406, f"Accept must be application/vnd.git-lfs+json, got {accept!r}")
        body = self.json_body("application/vnd.git-lfs+json")
        allowed = {"operation", "transfers", "objects", "hash_algo", "ref"}
        if set(body) - allowed:
            raise HubError(422, f"unexpected fields {sorted(set(body) - allowed)}")
        if body.get("operation") != "upload":
            raise HubError(422, f"operation must be 'upload', got {body.get('operation')!r}")
        transfers = body.get("transfers", ["basic"])  # absent means ["basic"] in the spec
        if not isinstance(transfers, list) or "basic" not in transfers:
            raise HubError(422, f"only the 'basic' transfer is offered; client offered {transfers!r}")
        if body.get("hash_algo", "sha256") != "sha256":
            raise HubError(422, f"hash_algo must be sha256, got {body.get('hash_algo')!r}")
        ref = body.get("ref")
        if ref is not None:
            # huggingface_hub sends the bare branch name ({"name": "main"}); git-lfs sends refs/heads/main.
            if not isinstance(ref, dict) or ref.get("name") not in (DEFAULT_BRANCH, f"refs/heads/{DEFAULT_BRANCH}"):
                raise HubError(422, f"ref must name the branch {DEFAULT_BRANCH!r}, got {ref!r}")
        objects = body.get("objects")
        if not isinstance(objects, list) or not objects:
            raise HubError(422, "objects must be a non-empty list")
        out = []
        for obj in objects:
            if not isinstance(obj, dict) or set(obj) != {"oid", "size"}:
                raise HubError(422, f"each object must be exactly {{oid, size}}, got {obj!r:.200}")
            oid, size = obj["oid"], obj["size"]
            if not isinstance(oid, str) or not HEX64.match(oid):
                raise HubError(422, f"oid must be 64 lowercase hex digits (sha256), got {oid!r}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise HubError(422, f"size must be a non-negative integer, got {size!r}")
            out.append(self.batch_object(oid, size))
        self.send_json(200, {"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                       content_type="application/vnd.git-lfs+json")

    def batch_object(self, oid, size):
        have = self.store.lfs_size(oid)
        if have is not None:
            if have != size:
                return {"oid": oid, "size": size,
                        "error": {"code": 422, "message": f"object {oid} exists with size {have}, not {size}"}}
            return {"oid": oid, "size": size, "authenticated": True}  # no "actions": already uploaded
        token = secrets.token_hex(16)
        with self.store.lock:
            self.store.pending_uploads[token] = (oid, size)
        # The Hub's upload href is a pre-signed storage URL and huggingface_hub PUTs to it with no headers at
        # all (it ignores "header" unless it holds a multipart chunk_size). So the upload token travels in the
        # href's query, as a signature does; a git-lfs client that sends the "header" entries works too.
        return {
            "oid": oid, "size": size, "authenticated": True,
            "actions": {
                "upload": {"href": f"{self.endpoint}/lfs-upload/{oid}?upload_token={token}",
                           "header": {"X-Upload-Token": token}, "expires_in": 3600},
                # No "header" for verify: like huggingface_hub, the client authenticates it with its own
                # Authorization: Bearer token (repeating the token here would make such a client send it twice).
                "verify": {"href": f"{self.endpoint}/lfs-verify", "expires_in": 3600},
            },
        }

    def h_lfs_upload(self, oid):
        self.no_query(allowed=("upload_token",))
        token = self.headers.get("X-Upload-Token") or (self.query.get("upload_token") or [None])[0]
        with self.store.lock:
            granted = self.store.pending_uploads.get(token) if token else None
        if granted is None or granted[0] != oid:
            raise HubError(403, "missing or wrong upload token for this object (take the href the batch gave)")
        size = granted[1]
        # The Hub's signed storage URLs (S3) refuse chunked uploads: the PUT must carry Content-Length.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or self.headers.get("Content-Length") is None:
            raise HubError(411, "the upload must carry Content-Length (chunked transfer encoding is refused)")
        data = self.body()
        if len(data) != size:
            raise HubError(400, f"body has {len(data)} bytes, the batch announced {size}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"body's sha256 is {hashlib.sha256(data).hexdigest()}, not {oid}")
        self.store.write_atomic(self.store.lfs_path(oid), data)
        with self.store.lock:
            self.store.pending_uploads.pop(token, None)
        self.send_bytes(200, b"", "text/plain", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def h_lfs_verify(self):
        self.require_auth()
        self.no_query()
        body = self.json_body("application/json", "application/vnd.git-lfs+json")
        oid, size = body.get("oid"), body.get("size")
        if not isinstance(oid, str) or not HEX64.match(oid) or not isinstance(size, int):
            raise HubError(422, "expected {\"oid\": sha256 hex, \"size\": int}")
        have = self.store.lfs_size(oid)
        if have is None:
            raise HubError(404, f"object {oid} was not uploaded")
        if have != size:
            raise HubError(404, f"object {oid} has size {have}, not {size}")
        self.send_json(200, {"oid": oid, "size": size})

    def h_commit(self, ns, name, rev):
        repo = self.writable_repo(ns, name)
        self.no_query(allowed=("create_pr",))
        self.branch(repo, rev)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-ndjson":
            raise HubError(400, f"Content-Type must be application/x-ndjson, got {ctype!r}")
        try:
            lines = [json.loads(l) for l in self.body().decode("utf-8").split("\n") if l.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HubError(400, f"body is not ndjson: {e}")
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise HubError(422, "the first ndjson line must be {\"key\": \"header\", \"value\": {...}}")
        summary, description, parent = self.commit_header(lines[0])
        files, deleted, seen = [], [], set()
        for line in lines[1:]:
            if not isinstance(line, dict) or set(line) != {"key", "value"} or not isinstance(line["value"], dict):
                raise HubError(422, f"each ndjson line must be {{key, value}}, got {line!r:.200}")
            key, value = line["key"], line["value"]
            path = value.get("path")
            # A deletedFolder path may end with "/".
            checked = path.rstrip("/") if key == "deletedFolder" and isinstance(path, str) else path
            if path_problem(checked):
                raise HubError(422, f"{key}: {path_problem(checked)}")
            if path in seen:
                raise HubError(422, f"{path!r} appears twice in the commit")
            seen.add(path)
            if key == "file":
                files.append(self.commit_regular_file(value))
            elif key == "lfsFile":
                files.append(self.commit_lfs_file(value))
            elif key == "deletedFile" and set(value) == {"path"}:
                deleted.append(path)
            elif key == "deletedFolder" and set(value) == {"path"}:
                deleted.append(path.rstrip("/") + "/")
            else:
                raise HubError(422, f"unknown or malformed operation key {key!r}")
        if not files and not deleted:
            raise HubError(422, "the commit has no operations")
        sha = self.store.commit(repo, summary, description, parent, files, deleted)
        self.send_json(200, {"commitUrl": f"{self.endpoint}/{repo.id}/commit/{sha}", "commitOid": sha,
                             "success": True, "pullRequestUrl": None})

    def commit_header(self, line):
        value = line.get("value")
        if set(line) != {"key", "value"} or not isinstance(value, dict):
            raise HubError(422, "malformed header line")
        if set(value) - {"summary", "description", "parentCommit"}:
            raise HubError(422, f"unexpected header fields {sorted(set(value) - {'summary', 'description', 'parentCommit'})}")
        summary, description = value.get("summary"), value.get("description", "")
        if not isinstance(summary, str) or not summary.strip():
            raise HubError(422, "header.summary must be a non-empty string")
        if not isinstance(description, str):
            raise HubError(422, "header.description must be a string")
        parent = value.get("parentCommit")
        if parent is not None and (not isinstance(parent, str) or not re.match(r"^[0-9a-f]{7,40}$", parent)):
            raise HubError(422, f"header.parentCommit must be a commit sha, got {parent!r}")
        return summary, description, parent

    def commit_regular_file(self, value):
        if set(value) != {"content", "path", "encoding"} or value["encoding"] != "base64":
            raise HubError(422, f"a file operation is {{content, path, encoding: base64}}, got keys {sorted(value)}")
        try:
            content = base64.b64decode(value["content"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise HubError(422, f"{value['path']}: content is not base64")
        path = value["path"]
        # Empty files are always committed as regular (huggingface_hub does that: LFS cannot store them).
        if content and upload_mode(path, len(content), content[:SAMPLE_SIZE]) == "lfs":
            raise HubError(422, f"{path} must be uploaded through LFS (preupload answers uploadMode 'lfs' for it); "
                                "send it as an lfsFile")
        return Entry(path, "regular", hashlib.sha256(content).hexdigest(), len(content)), content

    def commit_lfs_file(self, value):
        if not {"path", "algo", "oid"} <= set(value) <= {"path", "algo", "oid", "size"}:
            raise HubError(422, f"an lfsFile operation is {{path, algo, oid, size}}, got keys {sorted(value)}")
        path, oid, size = value["path"], value["oid"], value.get("size")
        if value["algo"] != "sha256" or not isinstance(oid, str) or not HEX64.match(oid):
            raise HubError(422, f"{path}: algo must be sha256 and oid 64 lowercase hex")
        have = self.store.lfs_size(oid)
        if have is None:
            raise HubError(422, f"{path}: LFS object {oid} was never uploaded")
        # size may be left out only by a server-side copy (CommitOperationCopy); an upload always sends it.
        if size is not None and size != have:
            raise HubError(422, f"{path}: LFS object {oid} has size {have}, not {size}")
        return Entry(path, "lfs", oid, have), None

    # -- read side: model info, tree, resolve

    def h_model_info(self, ns, name, rev=DEFAULT_BRANCH):
        repo = self.readable_repo(ns, name)
        self.no_query(allowed=("blobs", "securityStatus", "expand"))
        commit = self.store.resolve(repo, rev)
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path in sorted(commit.tree):
            entry = commit.tree[path]
            sib = {"rfilename": path}
            if blobs:
                sib.update(size=entry.size, blobId=entry.blob_oid(self.store))
                if entry.mode == "lfs":
                    sib["lfs"] = {"sha256": entry.sha256, "size": entry.size,
                                  "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
            siblings.append(sib)
        self.send_json(200, {
            "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24], "id": repo.id, "modelId": repo.id,
            "author": ns, "sha": commit.sha, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": [], "library_name": None, "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.tree.values()),
        })

    def h_tree(self, ns, name, rev, path=""):
        repo = self.readable_repo(ns, name)
        self.no_query(allowed=("recursive", "expand", "cursor", "limit"))
        commit = self.store.resolve(repo, rev)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and prefix.rstrip("/") in commit.tree:
            raise HubError(404, f"{path} is a file, not a folder", error_code="EntryNotFound")
        below = [p for p in sorted(commit.tree) if p.startswith(prefix)]
        if prefix and not below:
            raise HubError(404, f"{path} does not exist at {rev}", error_code="EntryNotFound")
        entries, folders = [], set()
        for p in below:
            rest = p[len(prefix):].split("/")
            for i in range(1, len(rest)):  # folders on the way to this file
                if recursive or i == 1:
                    folders.add(prefix + "/".join(rest[:i]))
            if recursive or len(rest) == 1:
                entries.append(self.tree_file(commit.tree[p]))
        for f in sorted(folders):
            tree_id = hashlib.sha1(("tree:" + commit.sha + ":" + f).encode()).hexdigest()
            entries.append({"type": "directory", "oid": tree_id, "size": 0, "path": f})
        entries.sort(key=lambda e: e["path"])
        self.send_json(200, entries)

    def tree_file(self, entry):
        out = {"type": "file", "oid": entry.blob_oid(self.store), "size": entry.size, "path": entry.path}
        if entry.mode == "lfs":
            out["lfs"] = {"oid": entry.sha256, "size": entry.size,
                          "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
        return out

    def h_resolve(self, ns, name, rev, path):
        # Served directly with 200 (the Hub redirects LFS files to a CDN; huggingface_hub reads the same
        # headers from either). No X-Xet-Hash header: plain HTTP download.
        repo = self.readable_repo(ns, name)
        self.no_query(allowed=("download",))
        commit = self.store.resolve(repo, rev)
        entry = commit.tree.get(path)
        if entry is None:
            # huggingface_hub caches the non-existence of a file under the commit named by X-Repo-Commit.
            raise HubError(404, f"Entry not found: {path} at {rev}", error_code="EntryNotFound",
                           headers={"X-Repo-Commit": commit.sha})
        data = self.store.read_content(entry)
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if entry.mode == "lfs":
            headers.update({"ETag": f'"{entry.sha256}"', "X-Linked-Etag": f'"{entry.sha256}"',
                            "X-Linked-Size": str(entry.size)})
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        status, data = self.apply_range(data, headers)
        self.send_bytes(status, data, "application/octet-stream", headers)

    def apply_range(self, data, headers):
        """A single "bytes=a-b" / "bytes=a-" range (huggingface_hub resumes downloads with one)."""
        rng = self.headers.get("Range")
        if rng is None:
            return 200, data
        m = re.match(r"^bytes=(\d+)-(\d*)$", rng.strip())
        if not m or int(m.group(1)) >= len(data):
            raise HubError(416, f"unsatisfiable range {rng!r} for {len(data)} bytes",
                           headers={"Content-Range": f"bytes */{len(data)}"})
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return 206, data[start:end + 1]


# ---------------------------------------------------------------- main


def watch_stdin(server):
    """End the server when stdin reaches EOF: a test that drops the pipe (or dies) takes the server with it."""
    while sys.stdin.buffer.read(65536):
        pass
    threading.Thread(target=server.shutdown, daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder for repos, LFS blobs and log.jsonl (created if missing)")
    ap.add_argument("--token", required=True, help="the one valid access token (Authorization: Bearer TOKEN)")
    ap.add_argument("--user", default="peftrain-test", help="the token's user: the only writable namespace")
    ap.add_argument("--ignore-stdin", action="store_true", help="do not stop at EOF on stdin")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args()

    Handler.store = Store(os.path.abspath(args.root), args.user)
    Handler.token = args.token
    Handler.verbose = args.verbose
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    sys.stdout.write(json.dumps({"endpoint": f"http://{host}:{port}"}) + "\n")
    sys.stdout.flush()
    if not args.ignore_stdin:
        threading.Thread(target=watch_stdin, args=(server,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
