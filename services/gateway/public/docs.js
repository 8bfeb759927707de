// Renders /openapi.json with Redoc's standalone bundle, served by the gateway itself (no CDN).
/* global Redoc */
Redoc.init('/openapi.json', { hideDownloadButton: false, expandResponses: '200,202' }, document.getElementById('reference'));
