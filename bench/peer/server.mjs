// A bare ACK-only HL7 v2 MLLP peer for side-by-side benchmarks with Junction.
//
// It is @medplum/hl7's Hl7Server, written by someone else, answering every
// message with an original-mode AA ACK (MSA-2 = the message's MSH-10). It
// keeps nothing on disk and does no work besides parsing and acknowledging:
// a non-durable baseline for `junction load`.
//
// Usage: node server.mjs PORT        (listens on 127.0.0.1:PORT only)
// Prints "listening 127.0.0.1:PORT" once ready; stops on SIGTERM/SIGINT.

import { Hl7Server } from '@medplum/hl7';

const port = Number.parseInt(process.argv[2] ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`usage: node server.mjs PORT (got ${JSON.stringify(process.argv[2])})`);
  process.exit(2);
}

let received = 0;
const server = new Hl7Server((connection) => {
  connection.addEventListener('message', ({ message }) => {
    received += 1;
    connection.send(message.buildAck({ ackCode: 'AA' }));
  });
  connection.addEventListener('error', ({ error }) => {
    // A peer going away mid-run is normal at the end of a load; note anything else.
    if (error?.code !== 'ECONNRESET' && error?.code !== 'EPIPE') {
      console.error(`connection error: ${error?.message ?? error}`);
    }
  });
});

// Hl7Server.start passes its first argument to net.Server.listen, which also
// accepts an options object: this binds the loopback interface only.
await server.start({ port, host: '127.0.0.1' });
console.log(`listening 127.0.0.1:${port}`);

const stop = async (signal) => {
  console.log(`${signal}: stopping after ${received} message(s)`);
  await server.stop({ forceDrainTimeoutMs: 1000 });
  process.exit(0);
};
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
