#!/usr/bin/env python3
"""Drive a MESH mailbox with NHS England's own client (PyPI `mesh-client`).

An independent peer for Junction's tests: it lists, sends and downloads the way
NHS's client does (chunking, gzip and the HMAC header are its own).

    mesh_tool.py --url URL --mailbox X26ABC2 --password password --shared-key TestKey list
        -> a JSON array of message ids in the inbox
    ... send --to X26ABC1 --workflow-id TEST_WORKFLOW --file bundle.json [--subject S] [--chunk-size N]
        -> the new message id
    ... download --message-id ID --out body.bin [--no-ack]
        -> the message's headers as one JSON object; the body goes to --out
           (mesh_client reassembles chunks and undoes gzip itself), then the
           message is acknowledged unless --no-ack
    --ca-file CA and --cert CERT KEY (before the command) verify the server
    and present a client certificate (mutual TLS); by default no verification.
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
    parser.add_argument("--ca-file", help="CA bundle to verify the server with (default: no verification)")
    parser.add_argument("--cert", nargs=2, metavar=("CERT", "KEY"), help="client certificate and key (mutual TLS)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list")
    send = commands.add_parser("send")
    send.add_argument("--to", required=True)
    send.add_argument("--workflow-id", required=True)
    send.add_argument("--file", required=True)
    send.add_argument("--subject")
    send.add_argument("--chunk-size", type=int, help="largest chunk in bytes (default: the client's 75 MiB)")
    send.add_argument("--checksum", help="mex-Content-Checksum to send (default: none)")
    download = commands.add_parser("download")
    download.add_argument("--message-id", required=True)
    download.add_argument("--out", required=True)
    download.add_argument("--no-ack", action="store_true")
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
        if args.command == "list":
            print(json.dumps(client.list_messages()))
        elif args.command == "send":
            with open(args.file, "rb") as f:
                body = f.read()
            message_id = client.send_message(
                args.to,
                body,
                workflow_id=args.workflow_id,
                subject=args.subject,
                content_type="application/fhir+json",
                max_chunk_size=args.chunk_size,
                **({"checksum": args.checksum} if args.checksum else {}),
            )
            print(message_id)
        else:
            inbox = client.list_messages()
            if args.message_id not in inbox:
                print(f"message {args.message_id} is not in the inbox of {args.mailbox}: {inbox}", file=sys.stderr)
                return 2
            message = client.retrieve_message(args.message_id)
            body = message.read()
            with open(args.out, "wb") as out:
                out.write(body)
            headers = {
                "message_id": message.id(),
                "workflow_id": message.workflow_id,
                "local_id": message.local_id,
                "subject": message.subject,
                "filename": message.filename,
                "message_type": message.message_type,
                "sender": message.sender,
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
