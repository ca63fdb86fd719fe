// k6: one POST at a fixed arrival rate, open loop (bench/wrk_load.py run_rate).
// Requests start on k6's schedule whatever the latency; when every VU is busy, an
// arrival is dropped and counted (dropped_iterations), never delayed.
import http from 'k6/http';

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['p(50)', 'p(99)', 'avg', 'max'],
  scenarios: {
    open: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE),
      timeUnit: '1s',
      duration: `${__ENV.SECONDS}s`,
      preAllocatedVUs: Number(__ENV.VUS),
      maxVUs: Number(__ENV.MAX_VUS),
      gracefulStop: '10s',
    },
  },
};

const body = open(__ENV.BODY);
const params = { headers: JSON.parse(__ENV.HEADERS), timeout: '30s' };

export default function () {
  http.post(__ENV.URL, body, params);
}

export function handleSummary(data) {
  return { [__ENV.OUT]: JSON.stringify(data.metrics) };
}
