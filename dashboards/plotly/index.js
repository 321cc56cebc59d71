'use strict';
// plotly.js with the trace types the console draws (scatter is in the core): a third of the
// full bundle's bytes, which the browser would parse before the first chart. Dash's graphs
// take window.Plotly when it is there and load the full bundle only when it is not.
var Plotly = require('plotly.js/lib/core');

Plotly.register([
    require('plotly.js/lib/bar'),
    require('plotly.js/lib/heatmap'),
    require('plotly.js/lib/sankey'),
]);

module.exports = Plotly;
