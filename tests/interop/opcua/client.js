"use strict";
// A third-party OPC-UA client for aidc's interop tests: node-opcua reading nodes once.
//
// usage: node client.js ENDPOINT PKI_DIR NODEID...
// NodeIds as in aidc's profiles: "ns=2;s=Name", or "nsu=URI;s=Name" (looked up in the
// server's NamespaceArray). Connects with security None and an anonymous session, reads every
// node in one Read and prints one JSON object: {NODEID: {value, dataType, status}}.
const { OPCUAClient, AttributeIds, DataType } = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

const NAMESPACE_ARRAY = "ns=0;i=2255";

function withIndex(nodeId, namespaces) {
  const match = /^nsu=([^;]+);(.*)$/.exec(nodeId);
  return match ? `ns=${namespaces.indexOf(match[1])};${match[2]}` : nodeId;
}

async function main() {
  const [endpoint, pkiDir, ...nodeIds] = process.argv.slice(2);
  const client = OPCUAClient.create({
    applicationName: "node-opcua client for aidc",
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 0 },
    clientCertificateManager: new OPCUACertificateManager({
      rootFolder: pkiDir,
      automaticallyAcceptUnknownCertificate: true,
    }),
  });
  await client.connect(endpoint);
  try {
    const session = await client.createSession();
    const namespaces = (await session.read({ nodeId: NAMESPACE_ARRAY })).value.value;
    const results = await session.read(
      nodeIds.map((id) => ({ nodeId: withIndex(id, namespaces), attributeId: AttributeIds.Value })),
    );
    const out = {};
    nodeIds.forEach((id, i) => {
      const { value, statusCode } = results[i];
      out[id] = { value: value.value, dataType: DataType[value.dataType], status: statusCode.name };
    });
    process.stdout.write(JSON.stringify(out) + "\n");
    await session.close();
  } finally {
    await client.disconnect();
  }
}

main().catch((err) => {
  process.stderr.write(`client.js: ${err.message || err}\n`);
  process.exit(1);
});
