// launch.js - a Product Hunt launch replayed against launchguard with k6.
//
// Three scenarios run together, all against 127.0.0.1 unless BASE is set:
//   pages     ramping arrival rate of page views up to PEAK_RPS (default 15,000/s):
//             /launch/ with tracking parameters, / and a few other pages
//   webhooks  signed upvotes and comments (HMAC-SHA256 in k6), ramping to 50/s, so
//             the scale factor rises and the edge reacts while the pages load
//   beacons   conversion beacons, POST /api/convert {"goal":"signup"}, 1% of peak
//
// Thresholds: p99 under 50 ms and errors under 0.1% on the critical paths (pages
// under / and /launch/, webhooks, beacons); non-critical pages may be shed with 503
// by design once the factor passes backpressure.shed_factor, so they are excluded.
//
//   k6 run -e SECRET=$(cat data/state/demo-webhook-secret) benches/k6/launch.js
//   k6 run -e BASE=http://127.0.0.1:8080 -e SECRET=... -e PEAK_RPS=15000 \
//          -e RAMP=60s -e HOLD=60s benches/k6/launch.js
//
// Install k6 from the Grafana packages or a release binary (see BENCHMARKS.md).
import http from 'k6/http';
import crypto from 'k6/crypto';
import { check } from 'k6';
import { Rate } from 'k6/metrics';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const SECRET = __ENV.SECRET || '';
const PEAK = Number(__ENV.PEAK_RPS || 15000);
const RAMP = __ENV.RAMP || '60s';
const HOLD = __ENV.HOLD || '60s';
const WEBHOOK_PATH = __ENV.WEBHOOK_PATH || '/webhooks/producthunt';

const criticalErrors = new Rate('critical_errors');

export const options = {
    discardResponseBodies: true,
    summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
    scenarios: {
        pages: {
            executor: 'ramping-arrival-rate',
            exec: 'page',
            startRate: Math.max(1, Math.floor(PEAK / 100)),
            timeUnit: '1s',
            preAllocatedVUs: 500,
            maxVUs: 5000,
            stages: [
                { target: PEAK, duration: RAMP },
                { target: PEAK, duration: HOLD },
                { target: 0, duration: '10s' },
            ],
        },
        webhooks: {
            executor: 'ramping-arrival-rate',
            exec: 'webhook',
            startRate: 1,
            timeUnit: '1s',
            preAllocatedVUs: 20,
            maxVUs: 200,
            stages: [
                { target: 50, duration: RAMP },
                { target: 50, duration: HOLD },
                { target: 0, duration: '10s' },
            ],
        },
        beacons: {
            executor: 'ramping-arrival-rate',
            exec: 'beacon',
            startRate: 1,
            timeUnit: '1s',
            preAllocatedVUs: 50,
            maxVUs: 500,
            stages: [
                { target: Math.max(1, Math.floor(PEAK / 100)), duration: RAMP },
                { target: Math.max(1, Math.floor(PEAK / 100)), duration: HOLD },
                { target: 0, duration: '10s' },
            ],
        },
    },
    thresholds: {
        'http_req_duration{critical:yes}': ['p(99)<50'],
        critical_errors: ['rate<0.001'],
    },
};

const PAGES = [
    { path: '/launch/?utm_source=producthunt&utm_medium=launch', critical: 'yes', weight: 60 },
    { path: '/launch/?ref=producthunt', critical: 'yes', weight: 15 },
    { path: '/', critical: 'yes', weight: 15 },
    { path: '/style.css', critical: 'no', weight: 5 },
    { path: '/app.js', critical: 'no', weight: 5 },
];
const TOTAL_WEIGHT = PAGES.reduce((s, p) => s + p.weight, 0);

function pick() {
    let r = Math.random() * TOTAL_WEIGHT;
    for (const p of PAGES) {
        r -= p.weight;
        if (r < 0) return p;
    }
    return PAGES[0];
}

export function page() {
    const p = pick();
    const res = http.get(BASE + p.path, {
        headers: { 'Accept-Encoding': 'gzip, br' },
        tags: { critical: p.critical, name: p.path.split('?')[0] },
    });
    const ok = check(res, {
        'page answered': (r) => r.status === 200 || r.status === 304 || (p.critical === 'no' && r.status === 503),
    });
    if (p.critical === 'yes') criticalErrors.add(!ok);
}

export function webhook() {
    const kinds = ['upvote', 'upvote', 'upvote', 'comment', 'maker_comment'];
    const kind = kinds[Math.floor(Math.random() * kinds.length)];
    const id = `k6-${__VU}-${__ITER}-${Date.now()}`;
    // created_at is the signed time launchguard checks against webhook.tolerance_secs.
    const body = JSON.stringify({ id, event_type: kind, created_at: new Date().toISOString(), data: { post: 'launch' } });
    const sig = 'sha256=' + crypto.hmac('sha256', SECRET, body, 'hex');
    const res = http.post(BASE + WEBHOOK_PATH, body, {
        headers: { 'Content-Type': 'application/json', 'X-ProductHunt-Signature': sig },
        tags: { critical: 'yes', name: 'webhook' },
    });
    criticalErrors.add(!check(res, { 'webhook accepted': (r) => r.status === 202 || r.status === 200 }));
}

export function beacon() {
    const res = http.post(BASE + '/api/convert', JSON.stringify({ goal: 'signup' }), {
        headers: { 'Content-Type': 'application/json' },
        tags: { critical: 'yes', name: 'beacon' },
    });
    criticalErrors.add(!check(res, { 'beacon accepted': (r) => r.status === 204 }));
}
