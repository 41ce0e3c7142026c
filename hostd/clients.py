"""Ready-made settings for the upload clients people point at a file host."""

from __future__ import annotations

import json
import urllib.parse


def sharex_config(public_url: str, key: str | None = None) -> str:
    """A ShareX custom uploader (.sxcu; ShareX 13.7 or newer): double-clicked, ShareX imports
    it and makes it the destination for images, text and files, and keeps each upload's
    deletion link in its history. With `key`, uploads are registered to the key's account;
    without, they are anonymous."""
    config: dict[str, object] = {
        "Version": "15.0.0",
        # Told apart in ShareX's list of uploaders: one with a key beside the anonymous one.
        "Name": f"hostd ({_netloc(public_url)}, {'your key' if key else 'anonymous'})",
        "DestinationType": "ImageUploader, TextUploader, FileUploader",
        "RequestMethod": "POST",
        "RequestURL": f"{public_url}/api/upload",
        "Body": "MultipartFormData",
        "FileFormName": "file",
        "URL": "{json:urls.ext}",
        "ThumbnailURL": f"{public_url}/thumbs/{{json:hash}}.webp",
        "DeletionURL": "{json:delete_url}",
        "ErrorMessage": "{json:error}",
    }
    if key is not None:
        config["Headers"] = {"Authorization": f"Bearer {key}"}
    return json.dumps(config, indent=2) + "\n"


def sharex_file_name(public_url: str, key_id: str | None = None) -> str:
    """The .sxcu file's name: the instance's host (and port), `files.example.org.sxcu`; for
    the uploader with a key, with the key's id as the key list shows it
    (`files.example.org_hk_0123456789abcdef.sxcu`), so that two saved uploaders, or one per
    key, do not come out as `(1)` copies of one name."""
    host = _netloc(public_url).replace(":", "_")
    return f"{host}_hk_{key_id}.sxcu" if key_id else f"{host}.sxcu"


def _netloc(public_url: str) -> str:
    return urllib.parse.urlsplit(public_url).netloc or "hostd"
