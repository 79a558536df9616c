"""The reference side of peftrain's push-to-hub test, against tests/reference/hub_server.py.

Usage:
    python hub_roundtrip.py ENDPOINT TOKEN SERVER_ROOT OUTDIR PUSHED_REPO PY_REPO CACHE_DIR

1. uploads OUTDIR into PY_REPO with huggingface_hub's own client, exactly as transformers 5.24's
   Trainer.push_to_hub does: create_repo(PY_REPO, exist_ok=True), then upload_folder(...,
   commit_message="End of training", ignore_patterns=["_*", "checkpoint-*"]);
2. downloads PUSHED_REPO (which the Rust program under test pushed) with snapshot_download;
3. prints one JSON object:
   {"py":         {path: {"sha256", "mode"}}  of PY_REPO's last commit, as SERVER_ROOT/log.jsonl records it,
    "pushed":     {path: {"sha256", "mode"}}  of PUSHED_REPO's last commit, likewise,
    "downloaded": {path: sha256}              of every file snapshot_download returned,
    "summaries":  {repo: summary of its last commit}}

The local server speaks the git-lfs upload protocol, not Xet, so Xet is turned off before huggingface_hub is
imported (the real Hub still accepts LFS uploads). Progress bars go to stderr; stdout holds only the JSON.
"""
import hashlib
import json
import os
import sys

os.environ["HF_HUB_DISABLE_XET"] = "1"
# The test harness runs references offline (HF_HUB_OFFLINE=1); this one talks to the local
# server on purpose, and never to the real hub (ENDPOINT is passed to every call).
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from importlib.metadata import version  # noqa: E402

from huggingface_hub import HfApi, snapshot_download  # noqa: E402

# transformers' Trainer.push_to_hub / _push_from_checkpoint (trainer.py, PREFIX_CHECKPOINT_DIR = "checkpoint").
TRAINER_IGNORE_PATTERNS = ["_*", "checkpoint-*"]
TRAINER_COMMIT_MESSAGE = "End of training"


def push_like_trainer(endpoint, token, outdir, repo_id):
    # transformers.utils.hub.hf_api(): one HfApi tagged with transformers' library name and version.
    api = HfApi(endpoint=endpoint, token=token, library_name="transformers", library_version=version("transformers"))
    repo_url = api.create_repo(repo_id, token=token, private=None, exist_ok=True)  # Trainer.init_hf_repo
    api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=outdir,
        commit_message=TRAINER_COMMIT_MESSAGE,
        token=token,
        ignore_patterns=list(TRAINER_IGNORE_PATTERNS),
        revision=None,  # args.hub_revision defaults to None
    )
    return repo_url.repo_id


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def downloaded_files(folder):
    """{relative posix path: sha256} of a snapshot folder (its files are symlinks into the cache's blobs)."""
    out = {}
    for dirpath, _, filenames in os.walk(folder):
        for fname in filenames:
            full = os.path.join(dirpath, fname)
            out[os.path.relpath(full, folder).replace(os.sep, "/")] = sha256_file(full)
    return out


def last_commits(server_root):
    """{repo: last commit record} from the server's log.jsonl (refusal lines skipped)."""
    last = {}
    with open(os.path.join(server_root, "log.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "files" in rec:
                last[rec["repo"]] = rec
    return last


def files_of(commit):
    if commit is None:
        return None
    return {f["path"]: {"sha256": f["sha256"], "mode": f["mode"]} for f in commit["files"]}


def main():
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    endpoint, token, server_root, outdir, pushed_repo, py_repo, cache_dir = sys.argv[1:]

    py_repo = push_like_trainer(endpoint, token, outdir, py_repo)
    snapshot = snapshot_download(pushed_repo, endpoint=endpoint, token=token, cache_dir=cache_dir)

    last = last_commits(server_root)
    result = {
        "py": files_of(last.get(py_repo)),
        "pushed": files_of(last.get(pushed_repo)),
        "downloaded": downloaded_files(snapshot),
        "summaries": {repo: rec["summary"] for repo, rec in sorted(last.items())},
    }
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
