"""Gives the image in an OCI layout (`tools/registry/relabel.py LAYOUT`) a label, and so an
image ID of its own: new config and manifest blobs, and the index pointing at the new manifest.
tools/node.sh pushes such a copy of the example image to the real node's private registry."""
import hashlib
import json
import os
import sys

layout = sys.argv[1]


def blob(digest):
    return os.path.join(layout, "blobs", *digest.split(":"))


def put(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blob(digest), "wb") as out:
        out.write(data)
    return {"digest": digest, "size": len(data)}


with open(os.path.join(layout, "index.json")) as f:
    index = json.load(f)
entry = index["manifests"][0]
with open(blob(entry["digest"])) as f:
    manifest = json.load(f)
with open(blob(manifest["config"]["digest"])) as f:
    config = json.load(f)
image_config = config.setdefault("config", {})
image_config["Labels"] = dict(image_config.get("Labels") or {})
image_config["Labels"]["dev.abc-operator.test"] = "private registry copy"
manifest["config"].update(put(json.dumps(config).encode()))
entry.update(put(json.dumps(manifest).encode()))
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
