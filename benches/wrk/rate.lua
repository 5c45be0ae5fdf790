-- rate.lua - GET at a fixed total rate with wrk 4 (which has no arrival-rate
-- executor), for benches/wrk/cache-bust.sh:
--
--   wrk -tT -cC -d10s -s rate.lua URL -- RATE T fixed        GET URL's path, RATE req/s in all
--   wrk -tT -cC -d10s -s rate.lua URL -- RATE T bust NONCE   GET path?bust=NONCE-<thread>-<n>,
--                                                            a new cache key every request
--
-- Pacing: wrk calls delay() before every request of every connection and then waits
-- that many ms. Each thread hands out send slots RATE/T a second apart, 1000*T/RATE ms
-- apart, on the monotonic clock (LuaJIT ffi, clock_gettime), so the total rate is RATE
-- however long the answers take, as long as a connection is free for each slot (a slot
-- already past is sent at once, without catching up: a slow server shows as a lower
-- achieved rate, never as a burst). Without ffi it falls back to a fixed delay of
-- conns_per_thread*1000*T/RATE ms (conns from the 5th argument), which gives RATE only
-- when answers take no time. Latency is measured by wrk from the send, after the delay.
--
-- done() prints one line "xcache: HIT=n MISS=m ..." (X-Cache of every answer) and
-- "status: 200=n ..." so the caller can check that a run was what it claims.

-- Globals read back by done() with thread:get().
xcache = {}
statuses = {}
tid = 0

local threads = {}
local nthreads = 0
local interval = 1000
local next_slot = 0
local n = 0
local path, prefix, bust
local now_ms

function setup(thread)
    nthreads = nthreads + 1
    thread:set("tid", nthreads)
    table.insert(threads, thread)
end

function init(args)
    local rate = tonumber(args[1] or "100")
    local t = tonumber(args[2] or "1")
    local mode = args[3] or "fixed"
    local nonce = args[4] or tostring(os.time())
    local conns = tonumber(args[5] or "1")
    interval = 1000 * t / rate
    path = wrk.path
    bust = (mode == "bust")
    if bust then
        prefix = path .. (path:find("?", 1, true) and "&" or "?") .. "bust=" .. nonce .. "-" .. tid .. "-"
    end
    wrk.headers["Accept-Encoding"] = "gzip, br"
    local ok, ffi = pcall(require, "ffi")
    if ok then
        ffi.cdef [[
            typedef struct { long tv_sec; long tv_nsec; } rate_timespec;
            int clock_gettime(int clk_id, rate_timespec *tp);
        ]]
        local ts = ffi.new("rate_timespec")
        now_ms = function()
            ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
            return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
        end
    else
        io.stderr:write("rate.lua: no ffi, fixed delay (rate falls with latency)\n")
        local fixed = math.floor(interval * conns / t + 0.5)
        now_ms = nil
        interval = fixed
    end
end

function delay()
    if not now_ms then
        return interval
    end
    local t = now_ms()
    local slot = next_slot
    if slot < t then
        slot = t
    end
    next_slot = slot + interval
    return math.floor(slot - t + 0.5)
end

function request()
    if bust then
        n = n + 1
        return wrk.format("GET", prefix .. n)
    end
    return wrk.format("GET", path)
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
    local x = headers["x-cache"] or headers["X-Cache"] or "none"
    xcache[x] = (xcache[x] or 0) + 1
end

local function line(name, key)
    local sum = {}
    for _, thread in ipairs(threads) do
        for k, v in pairs(thread:get(key) or {}) do
            sum[k] = (sum[k] or 0) + v
        end
    end
    local keys = {}
    for k in pairs(sum) do
        table.insert(keys, tostring(k))
    end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
        table.insert(parts, k .. "=" .. (sum[k] or sum[tonumber(k)]))
    end
    print(name .. ": " .. table.concat(parts, " "))
end

function done(summary, latency, requests)
    line("xcache", "xcache")
    line("status", "statuses")
end
