#!/usr/bin/env python3
"""Download one MESH message with NHS England's own client (PyPI `mesh-client`).

An independent check of what Junction sent: `mesh_client` reassembles chunks and
undoes `Content-Encoding: gzip` itself. Writes the body to --out, prints the
message's headers as one JSON object on stdout, then acknowledges the message
(unless --no-ack).

    mesh_download.py --url http://127.0.0.1:8700 --mailbox X26ABC2 \
        --password password --shared-key TestKey --message-id ID --out body.bin
"""
import argparse
import json
import sys

from mesh_client import MeshClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--mailbox", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--shared-key", required=True)
    parser.add_argument("--message-id", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-ack", action="store_true", help="leave the message in the inbox")
    parser.add_argument("--ca-file", help="CA bundle to verify the server with (default: no verification)")
    parser.add_argument("--cert", nargs=2, metavar=("CERT", "KEY"), help="client certificate and key (mutual TLS)")
    args = parser.parse_args()

    client = MeshClient(
        args.url,
        args.mailbox,
        args.password,
        shared_key=args.shared_key.encode(),
        verify=args.ca_file or False,
        cert=tuple(args.cert) if args.cert else None,
        max_retries=0,
    )
    with client:
        inbox = client.list_messages()
        if args.message_id not in inbox:
            print(f"message {args.message_id} is not in the inbox of {args.mailbox}: {inbox}", file=sys.stderr)
            return 2
        message = client.retrieve_message(args.message_id)
        body = message.read()
        with open(args.out, "wb") as out:
            out.write(body)
        headers = {
            "workflow_id": message.workflow_id,
            "local_id": message.local_id,
            "subject": message.subject,
            "filename": message.filename,
            "message_type": message.message_type,
            "checksum": message.checksum,
            "content_type": message.content_type,
            "mex_headers": dict(message.mex_headers()),
            "bytes": len(body),
        }
        message.close()
        if not args.no_ack:
            message.acknowledge()
        print(json.dumps(headers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
