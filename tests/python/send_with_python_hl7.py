#!/usr/bin/env python3
"""Send every HL7 sample to a running Junction engine with an independent MLLP sender.

This is the acceptance check "an independent sender gets AA for every sample":
the bytes go over the wire through software that is not ours.

Senders (``--client``):
  hl7     python-hl7's ``hl7.client.MLLPClient`` frames and sends the message;
          the ACK is parsed with ``hl7.parse``.
  hl7apy  hl7apy parses each sample (tolerant validation) and re-serialises it
          with ``to_mllp()``; the ACK is parsed with ``hl7apy.parser.parse_message``.

Batch files (FHS/BHS ... BTS/FTS): with ``--batches split`` (the default) they
are split here into their messages, each sent in its own frame and checked
against its own ACK; with ``--batches whole`` (python-hl7 only) the file is sent
as one frame and the reply must be a batch ACK holding, in order, one ACK per
message (parsed with ``hl7.parse_hl7``).

With ``--tls-ca FILE`` the connection is TLS (Python's ``ssl``, i.e. OpenSSL: a
TLS stack that is not ours), checking the listener's certificate against that CA
and the host name; ``--tls-cert``/``--tls-key`` present a client certificate.

For every message one JSON line is printed on stdout:
  {"file", "index", "control_id", "ack_code", "msa2", "ok", "error", "sent_hex"}
and a closing line "sent N message(s): N acknowledged as expected, N not".
``sent_hex`` is the exact payload framed for that message (null inside a whole
batch), so the caller can compare it with the raw bytes the journal kept; the
samples are fictional. The exit status is 0 only when every message got AA (or
CA when the message asked for enhanced mode) with MSA-2 equal to its MSH-10.
"""

import argparse
import json
import os
import socket
import ssl
import sys

SB = b"\x0b"
EB = b"\x1c"
CR = b"\x0d"

# Files in the samples tree that are not HL7 messages.
SKIP_SUFFIXES = (".md", ".txt", ".json", ".toml", ".py", ".sh")


def sample_files(root):
    """Every sample file under ``root``, sorted, skipping the ``bad`` folder."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "bad" and not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.lower().endswith(SKIP_SUFFIXES):
                continue
            found.append(os.path.join(dirpath, name))
    return sorted(found)


def segments_of(raw):
    """Split raw bytes into segments on CR, LF or CRLF, dropping empty lines."""
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return [s for s in text.split(b"\r") if s.strip()]


def split_messages(raw):
    """The messages in a file: one, or several when it is a batch file.

    A single message (no FHS/BHS, one MSH) is returned exactly as it is in the
    file, bar surrounding whitespace, so that the engine sees the sender's own
    line endings. Batch envelopes are split on MSH and their FHS/BHS/BTS/FTS
    segments dropped.
    """
    segs = segments_of(raw)
    heads = [s[:3] for s in segs]
    if heads.count(b"MSH") <= 1 and not ({b"FHS", b"BHS"} & set(heads)):
        return [raw.strip(b"\r\n\t \x00")]
    messages, current = [], None
    for seg in segs:
        head = seg[:3]
        if head in (b"FHS", b"BHS", b"BTS", b"FTS"):
            continue
        if head == b"MSH":
            if current:
                messages.append(b"\r".join(current) + b"\r")
            current = [seg]
        elif current is not None:
            current.append(seg)
    if current:
        messages.append(b"\r".join(current) + b"\r")
    return messages


def codec_of(raw):
    """The codec that decodes ``raw``: UTF-8 (BOM allowed), else ISO-8859-1 (MSH-18 8859/1)."""
    try:
        raw.decode("utf-8-sig")
        return "utf-8-sig"
    except UnicodeDecodeError:
        return "latin-1"


def decode(raw):
    """Decode message bytes for the parsers."""
    return raw.decode(codec_of(raw))


def msh_fields(raw):
    """(control id, wants enhanced ack) from the MSH segment, using python-hl7."""
    import hl7

    msh = None
    for seg in segments_of(raw):
        if seg.lstrip(b"\xef\xbb\xbf").startswith(b"MSH"):
            msh = decode(seg.lstrip(b"\xef\xbb\xbf"))
            break
    if msh is None:
        raise ValueError("no MSH segment")
    parsed = hl7.parse(msh).segment("MSH")
    control_id = str(parsed[10]) if len(parsed) > 10 else ""
    accept_ack = str(parsed[15]) if len(parsed) > 15 else ""
    app_ack = str(parsed[16]) if len(parsed) > 16 else ""
    return control_id, bool(accept_ack or app_ack)


def read_frame(sock, first, timeout):
    """Complete one MLLP frame, starting from bytes already received."""
    sock.settimeout(timeout)
    data = first
    while not (EB in data):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before a complete ACK frame")
        data += chunk
    # Swallow the CR after FS if it is still in flight.
    end = data.index(EB)
    if len(data) == end + 1:
        try:
            sock.settimeout(0.2)
            data += sock.recv(1)
        except socket.timeout:
            pass
        finally:
            sock.settimeout(timeout)
    start = data.find(SB)
    if start < 0 or start > end:
        raise ValueError("reply is not an MLLP frame: %r" % data[:40])
    return data[start + 1:end]


def ack_with_hl7(ack_bytes):
    """[(MSA-1, MSA-2)] of a reply: one ACK, or each ACK of a batch ACK in order."""
    import hl7

    text = decode(ack_bytes).replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    parsed = hl7.parse_hl7(text)

    def messages(container):
        if isinstance(container, hl7.Message):
            return [container]
        return [m for part in container for m in messages(part)]

    out = []
    for ack in messages(parsed):
        msh = ack.segment("MSH")
        if not str(msh[9]).startswith("ACK"):
            raise ValueError("reply MSH-9 is %r, expected ACK" % str(msh[9]))
        msa = ack.segment("MSA")
        out.append((str(msa[1]), str(msa[2])))
    return out


def tls_context(args):
    """The client TLS context the --tls-* arguments ask for, or None (plain TCP)."""
    if not args.tls_ca:
        return None
    context = ssl.create_default_context(cafile=args.tls_ca)
    if args.tls_cert:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def send_with_hl7(host, port, messages, timeout, tls=None):
    """Send every frame over one python-hl7 MLLPClient connection; yield (ACKs, bytes sent)."""
    from hl7.client import MLLPClient

    with MLLPClient(host, port) as client:
        client.socket.settimeout(timeout)
        if tls is not None:
            # python-hl7 connects a plain socket; TLS is wrapped around it here,
            # and the client frames and reads through the TLS socket as it is
            client.socket = tls.wrap_socket(client.socket, server_hostname=host)
        for raw in messages:
            # MLLPClient.send_message frames the bytes and returns the first recv();
            # an ACK split over several TCP segments is completed from the same socket.
            first = client.send_message(raw)
            yield ack_with_hl7(read_frame(client.socket, first, timeout)), raw


def send_with_hl7apy(host, port, messages, timeout, tls=None):
    """Parse each message with hl7apy, re-serialise it with to_mllp(), send on one socket;
    yield (ACKs, bytes sent)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    with socket.create_connection((host, port), timeout=timeout) as plain:
        sock = plain if tls is None else tls.wrap_socket(plain, server_hostname=host)
        for raw in messages:
            codec = codec_of(raw)
            text = raw.decode(codec).replace("\r\n", "\r").replace("\n", "\r").strip("\r")
            message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
            # Re-encode as the sender's bytes were (an 8859/1 message stays Latin-1).
            framed = message.to_mllp().encode("utf-8" if codec == "utf-8-sig" else codec)
            sock.sendall(framed)
            ack_text = decode(read_frame(sock, b"", timeout))
            ack = parse_message(
                ack_text.replace("\n", "\r").strip("\r"),
                validation_level=VALIDATION_LEVEL.TOLERANT,
                find_groups=False,
            )
            if not ack.msh.msh_9.to_er7().startswith("ACK"):
                raise ValueError("reply MSH-9 is %r, expected ACK" % ack.msh.msh_9.to_er7())
            yield [(ack.msa.msa_1.to_er7(), ack.msa.msa_2.to_er7())], framed[1:-2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client", choices=("hl7", "hl7apy"), default="hl7")
    parser.add_argument("--batches", choices=("split", "whole"), default="split",
                        help="send a batch file's messages one by one, or the file as one frame")
    parser.add_argument("--only-batches", action="store_true", help="send only the batch files")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK")
    parser.add_argument("--tls-ca", help="speak TLS, trusting this PEM CA file for the listener")
    parser.add_argument("--tls-cert", help="PEM client certificate (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("samples", help="samples folder (a bad/ subfolder, if any, is skipped) or one file")
    args = parser.parse_args()
    if args.batches == "whole" and args.client != "hl7":
        parser.error("--batches whole needs --client hl7 (hl7apy does not parse batches)")

    files = [args.samples] if os.path.isfile(args.samples) else sample_files(args.samples)
    frames = []  # (file, raw frame, [(index, control id, enhanced)])
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        name = os.path.relpath(path, args.samples) if os.path.isdir(args.samples) else os.path.basename(path)
        messages = split_messages(raw)
        is_batch = len(messages) > 1 or raw.lstrip(b"\xef\xbb\xbf\r\n")[:3] in (b"FHS", b"BHS")
        if args.only_batches and not is_batch:
            continue
        expected = [(i, *msh_fields(m)) for i, m in enumerate(messages)]
        if is_batch and args.batches == "whole":
            frames.append((name, raw.strip(b"\r\n\t \x00"), expected))
        else:
            frames.extend((name, m, [e]) for m, e in zip(messages, expected))
    total = sum(len(f[2]) for f in frames)
    if total == 0:
        print("no sample messages found under %s" % args.samples, file=sys.stderr)
        return 2

    sender = send_with_hl7 if args.client == "hl7" else send_with_hl7apy
    replies = sender(args.host, args.port, [f[1] for f in frames], args.timeout, tls_context(args))
    passed = failed = 0
    for name, _raw, expected in frames:
        try:
            (acks, sent), error = next(replies), None
        except StopIteration:
            acks, sent, error = [], None, "sender stopped early"
        except Exception as exc:  # the connection state is unknown: report and stop
            acks, sent, error = None, None, "%s: %s" % (type(exc).__name__, exc)
        if acks is not None and len(acks) != len(expected):
            error = error or "got %d ACK(s) in the reply, expected %d" % (len(acks), len(expected))
        for n, (index, control_id, enhanced) in enumerate(expected):
            result = {"file": name, "index": index, "control_id": control_id,
                      "ack_code": None, "msa2": None, "ok": False, "error": error,
                      # The exact payload framed, when the frame held this message alone.
                      "sent_hex": sent.hex() if sent is not None and len(expected) == 1 else None}
            if acks is not None and n < len(acks):
                code, msa2 = acks[n]
                wanted = ("AA", "CA") if enhanced else ("AA",)
                result.update(ack_code=code, msa2=msa2)
                result["ok"] = error is None and code in wanted and msa2 == control_id
                if not result["ok"] and error is None:
                    result["error"] = "expected %s with MSA-2 %r" % ("/".join(wanted), control_id)
            passed += result["ok"]
            failed += not result["ok"]
            print(json.dumps(result), flush=True)
        if acks is None:
            break
    failed = total - passed  # includes messages never sent after an error
    print("sent %d message(s): %d acknowledged as expected, %d not" % (total, passed, failed), flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
