"use strict";
// A third-party OPC-UA device for aidc's interop tests: node-opcua serving a few variables of
// the supercap_opcua profile (namespace urn:aidc:simulator, its string NodeIds) with fixed
// values written by hand. Capacitance and ESR are left out on purpose: a reader must report
// those two as BadNodeIdUnknown and still read the rest.
//
// usage: node server.js PORT PKI_DIR [LAYOUT]
// LAYOUT "profile" (default): a namespace of its own registered for the variables (index 2),
// with the profile's data types. LAYOUT "vendor": built the way device vendors often build
// them: the variables in the server's own namespace (index 1, its application URI), and
// every measurement a Double whatever the profile says.
// Prints {"port": PORT, "namespace": INDEX} once it accepts sessions (security None,
// anonymous); exits on SIGTERM.
const { OPCUAServer } = require("node-opcua-server");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");
const { DataType } = require("node-opcua-variant");

const VARIABLES = [
  ["Supercap.Voltage", DataType.Float, 391.5],
  ["Supercap.StateOfCharge", DataType.Float, 87.5],
  ["Supercap.Temperature", DataType.Float, 29.5],
  ["Supercap.Cycles", DataType.UInt32, 4711],
  ["Supercap.State", DataType.UInt16, 2], // vendor code 2: charging
  ["Supercap.Power", DataType.Float, -12.25], // negative: charging from the bus
];

async function main() {
  const [port, pkiDir, layout = "profile"] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
  const vendor = layout === "vendor";
  const server = new OPCUAServer({
    hostname: "127.0.0.1",
    port,
    resourcePath: "",
    serverInfo: vendor ? { applicationUri: "urn:aidc:simulator" } : undefined,
    serverCertificateManager: new OPCUACertificateManager({
      rootFolder: pkiDir,
      automaticallyAcceptUnknownCertificate: true,
    }),
    buildInfo: { productName: "node-opcua peer for aidc" },
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const namespace = vendor
    ? addressSpace.getOwnNamespace()
    : addressSpace.registerNamespace("urn:aidc:simulator");
  const device = namespace.addObject({
    organizedBy: addressSpace.rootFolder.objects,
    browseName: "Supercap",
  });
  for (const [name, profileType, value] of VARIABLES) {
    const dataType = vendor && profileType === DataType.Float ? DataType.Double : profileType;
    namespace.addVariable({
      componentOf: device,
      nodeId: `s=${name}`,
      browseName: name,
      dataType,
      value: { dataType, value },
    });
  }
  await server.start();
  process.stdout.write(JSON.stringify({ port, namespace: namespace.index }) + "\n");
  process.on("SIGTERM", async () => {
    await server.shutdown(0);
    process.exit(0);
  });
}

main().catch((err) => {
  process.stderr.write(`server.js: ${err.stack || err}\n`);
  process.exit(1);
});
