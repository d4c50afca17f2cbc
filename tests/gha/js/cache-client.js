// Save or restore paths with the real @actions/cache client.
// Usage: node cache-client.js '{"op": "save"|"restore", "paths": [...], "key": "...",
//                               "restoreKeys": [...], "options": {...}}'
// Prints one line "RESULT <json>" with the client's return value.
'use strict';
const cache = require('@actions/cache');

async function main() {
  const request = JSON.parse(process.argv[2]);
  let value;
  if (request.op === 'save') {
    value = await cache.saveCache(request.paths, request.key, request.options || {});
  } else if (request.op === 'restore') {
    value = await cache.restoreCache(request.paths, request.key, request.restoreKeys || [],
                                     request.options || {});
  } else {
    throw new Error(`unknown op ${request.op}`);
  }
  process.stdout.write(`RESULT ${JSON.stringify({value: value === undefined ? null : value})}\n`);
}

main().catch(error => {
  process.stdout.write(`RESULT ${JSON.stringify({error: String(error && error.stack || error)})}\n`);
  process.exitCode = 1;
});
