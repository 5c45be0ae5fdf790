-- launch.lua - the k6 launch scenario (benches/k6/launch.js) for wrk 4, which has no
-- HMAC and no arrival-rate executor. benches/wrk/launch.sh runs three wrk processes at
-- once, one per traffic class, each with its own latency figures:
--
--   wrk -s launch.lua ... -- pages              page views, as fast as the connections go
--   wrk -s launch.lua ... -- webhooks FILE MS   signed webhooks from FILE, one per MS ms
--                                               per connection (FILE: "sig<TAB>body" lines,
--                                               made by launch.sh with the demo secret)
--   wrk -s launch.lua ... -- beacons MS         POST /api/convert {"goal":"signup"}
--
-- done() prints the status counts of the class, so errors are visible per class.

-- `mode` and `counts` are globals so that done() can read them with thread:get().
mode = nil
counts = {}
local arg1, arg2
local reqs = {}
local n = 0
local pause = 0
local threads = {}

local pages = {
    -- path, weight (out of 100); the same mix as launch.js
    { "/launch/?utm_source=producthunt&utm_medium=launch", 60 },
    { "/launch/?ref=producthunt", 15 },
    { "/", 15 },
    { "/style.css", 5 },
    { "/app.js", 5 },
}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    mode, arg1, arg2 = args[1] or "pages", args[2], args[3]
    local headers = { ["Accept-Encoding"] = "gzip, br" }
    if mode == "pages" then
        -- A shuffled wheel of 100 requests in the weights above.
        for _, p in ipairs(pages) do
            for _ = 1, p[2] do
                table.insert(reqs, wrk.format("GET", p[1], headers))
            end
        end
        math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 1000)
        for i = #reqs, 2, -1 do
            local j = math.random(i)
            reqs[i], reqs[j] = reqs[j], reqs[i]
        end
    elseif mode == "webhooks" then
        pause = tonumber(arg2 or "40")
        for line in io.lines(arg1) do
            local sig, body = line:match("^([^\t]+)\t(.*)$")
            if sig then
                table.insert(reqs, wrk.format("POST", "/webhooks/producthunt", {
                    ["Content-Type"] = "application/json",
                    ["X-ProductHunt-Signature"] = sig,
                }, body))
            end
        end
        -- Each thread starts at its own place in the file, so ids are not replayed at once.
        n = math.random(#reqs)
    elseif mode == "beacons" then
        pause = tonumber(arg1 or "50")
        table.insert(reqs, wrk.format("POST", "/api/convert",
            { ["Content-Type"] = "application/json" }, '{"goal":"signup"}'))
    end
end

function request()
    n = n + 1
    return reqs[(n % #reqs) + 1]
end

function delay()
    return pause
end

function response(status, headers, body)
    counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
    local total = {}
    for _, t in ipairs(threads) do
        local c = t:get("counts")
        for k, v in pairs(c) do
            total[k] = (total[k] or 0) + v
        end
    end
    local parts = {}
    for k, v in pairs(total) do
        table.insert(parts, k .. "=" .. v)
    end
    table.sort(parts)
    local m = threads[1] and threads[1]:get("mode") or "?"
    io.write(string.format("class %s statuses: %s\n", m, table.concat(parts, " ")))
end
