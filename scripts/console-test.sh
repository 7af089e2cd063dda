#!/usr/bin/env bash
# The web console in a real browser (issue 11 #4): seeds a SQLite store with sagas in every
# status on the real broker (Tests/ConsoleFixture, whose participant keeps running), starts
# `saga console` on a free port with an operator token, then drives headless Chromium through
# overview → list → a compensated saga's page → a definition → the dead-letter queue → log in →
# a retry (and a requeue), asserting on the pages and, afterwards, on the store (`saga show
# --json`). Screenshots of each page go to .build/console-screenshots/.
#
# Needs AMQP_URL (scripts/test.sh exports it; otherwise the local broker of scripts/rabbitmq.sh
# is used, started if needed). Installs chromium, chromium-driver (apt-get) and selenium (pip)
# when missing. Exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "console-test.sh: $*" >&2; }

# Browser and driver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    log "installing chromium and chromium-driver with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
if ! python3 -c "import selenium" 2>/dev/null; then
    log "installing selenium with pip"
    python3 -m pip install --quiet selenium
fi

started_broker=0
if [[ -z "${AMQP_URL:-}" ]]; then
    scripts/rabbitmq.sh status >/dev/null 2>&1 || { scripts/rabbitmq.sh start; started_broker=1; }
    AMQP_URL="$(scripts/rabbitmq.sh url)"
fi
export AMQP_URL

WORK="$ROOT/.build/console-test"
SHOTS="$ROOT/.build/console-screenshots"
rm -rf "$WORK" "$SHOTS"
mkdir -p "$WORK" "$SHOTS"

for product in saga ConsoleFixture; do
    swift build --product "$product" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; exit 1; }
done
BIN="$(swift build --show-bin-path)"
PREFIX="console-test-$$-$RANDOM"
STORE="$WORK/sagas.db"

pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    if ((started_broker)); then env -u AMQP_URL scripts/rabbitmq.sh stop || true; fi
    if ((status != 0)); then
        log "FAILED (status $status); logs in $WORK, screenshots in $SHOTS"
        tail -n 30 "$WORK/fixture.log" "$WORK/console.log" 2>/dev/null >&2 || true
    fi
    exit $status
}
trap cleanup EXIT INT TERM

log "seeding $STORE (prefix $PREFIX) with the console fixture"
AMQP_URL="$AMQP_URL" STORE_PATH="$STORE" PREFIX="$PREFIX" OUT="$WORK/ids.json" "$BIN/ConsoleFixture" >"$WORK/fixture.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 180); do
    [[ -s "$WORK/ids.json" ]] && break
    kill -0 "${pids[0]}" 2>/dev/null || { log "the fixture exited before seeding"; exit 1; }
    sleep 1
done
[[ -s "$WORK/ids.json" ]] || { log "the fixture did not finish seeding in 180 s"; exit 1; }

# A token nobody sees: the console reads it from a file only its owner can read.
TOKEN_FILE="$WORK/operator-token"
python3 -c "import secrets; print(secrets.token_hex(24))" >"$TOKEN_FILE"
chmod 600 "$TOKEN_FILE"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"

log "starting saga console on 127.0.0.1:$PORT"
SAGAKIT_STORE_URL="sqlite://$STORE" SAGAKIT_PREFIX="$PREFIX" "$BIN/saga" console --port "$PORT" \
    --token-file "$TOKEN_FILE" --redact cardNumber,email --stalled-seconds 5 >"$WORK/console.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do
    grep -q "listening on" "$WORK/console.log" && break
    kill -0 "${pids[1]}" 2>/dev/null || { log "saga console exited"; cat "$WORK/console.log" >&2; exit 1; }
    sleep 1
done
grep -q "listening on http://127.0.0.1:$PORT/" "$WORK/console.log" || { log "saga console did not listen on 127.0.0.1:$PORT"; exit 1; }
sleep 6 # let the running sagas become stalled (--stalled-seconds 5)

log "checking the console's /metrics (gauges read from the store)"
python3 - "http://127.0.0.1:$PORT/metrics" "$WORK/ids.json" <<'PYTHON'
import json, re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=30).read().decode()
def value(name, **labels):
    key = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    raise SystemExit(f"console /metrics has no {key}:\n{text}")
assert value("sagakit_store_sagas", saga="trip", status="compensated") >= 2, text
assert value("sagakit_store_sagas", saga="trip", status="needsAttention") >= 1, text
assert value("sagakit_store_sagas_stalled", saga="trip") >= 1, text
assert value("sagakit_store_sagas_stuck_retrying", saga="trip") >= 1, text
assert value("sagakit_store_participants", service="fixture", state="live") == 1, text
assert value("sagakit_store_participants", service="fixture", state="silent") == 0, text
assert value("sagakit_store_command_live_handlers", command="refund.pay") == 1, text
assert value("sagakit_store_command_live_handlers", command="warehouse.unpack") == 1, text
ids = json.load(open(sys.argv[2]))
for saga_id in (v for v in ids.values() if isinstance(v, str)):
    assert saga_id not in text, f"a saga id is in /metrics: {saga_id}"
print("console-test.sh: /metrics OK", file=sys.stderr)
PYTHON

log "driving headless Chromium"
CONSOLE_URL="http://127.0.0.1:$PORT" IDS="$WORK/ids.json" TOKEN_FILE="$TOKEN_FILE" SHOTS="$SHOTS" \
    timeout 300 python3 - <<'PYTHON'
import json, os, time, urllib.request, urllib.error
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from selenium.webdriver.support import expected_conditions as EC
from selenium.common.exceptions import StaleElementReferenceException

base = os.environ["CONSOLE_URL"]
ids = json.load(open(os.environ["IDS"]))
token = open(os.environ["TOKEN_FILE"]).read().strip()
shots = os.environ["SHOTS"]
checks = 0

def check(condition, what):
    global checks
    if not condition:
        raise AssertionError(what)
    checks += 1
    print("  ok:", what)

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", "--disable-gpu"]:
    options.add_argument(argument)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 30)

def shot(name):
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(1400, min(max(height + 40, 800), 4000))
    time.sleep(0.3)
    driver.save_screenshot(os.path.join(shots, name))
    driver.set_window_size(1400, 1000)
    print("  screenshot", name)

# The pages refresh themselves on every lifecycle event (a saga of the fixture retries every
# second), so elements go stale: read and count in one script call, and retry clicks.
def text(selector):
    value = driver.execute_script("var e = document.querySelector(arguments[0]); return e ? e.innerText : null", selector)
    if value is None:
        raise AssertionError(f"no element {selector} on {driver.current_url}")
    return value

def count(selector):
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector)

def type_into(selector, value):
    for _ in range(20):
        try:
            element = driver.find_element(By.CSS_SELECTOR, selector)
            element.clear()
            element.send_keys(value)
            if element.get_attribute("value") == value:
                return
        except StaleElementReferenceException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"could not type into {selector}")

def click(by, value):
    for _ in range(20):
        try:
            driver.find_element(by, value).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"could not click {value}")

def post(path, fields, headers):
    request = urllib.request.Request(base + path, data=urllib.parse.urlencode(fields).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code

import urllib.parse
try:
    # 1. Overview: needs attention and stalled first, counts, the last hour, live updates on.
    print("overview")
    driver.get(base + "/")
    wait.until(lambda d: d.execute_script("return document.body.dataset.sse") == "open")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#live-status.on")))
    check(ids["needsAttention"] in text("#needs-attention"), "the needs-attention saga is listed under Needs attention")
    check(ids["running"] in text("#stalled"), "the hanging saga is listed as stalled")
    check(ids["stuck"] in text("#stuck"), "the saga retrying past its pivot is listed as stuck retrying")
    cards = text("#status-cards")
    for status in ["needs-attention", "running", "waiting", "compensating", "completed", "compensated"]:
        check(status in cards, f"status card {status}")
    check("trip" in text("#by-definition") and "invoice" in text("#by-definition"), "sagas by definition")
    check(count("#last-hour svg rect.started") >= 1, "started-per-minute bars drawn")
    check("p50" in text("#last-hour") and "p99" in text("#last-hour"), "latency percentiles")
    first = driver.execute_script("return document.querySelector('main section.attention').id")
    check(first == "needs-attention", "needs-attention comes before everything else but the counts")
    shot("01-overview.png")

    # 2. The list: filter by status, then search.
    print("list")
    click(By.LINK_TEXT, "Sagas")
    wait.until(EC.presence_of_element_located((By.ID, "filters")))
    click(By.CSS_SELECTOR, "input[name=status][value=compensated]")
    click(By.CSS_SELECTOR, "#filters button")
    wait.until(EC.url_contains("status=compensated"))
    table = text("main table.sagas")
    check(ids["compensated"] in table and ids["compensatedAfterRetries"] in table, "both compensated sagas listed")
    check(ids["completed"] not in table and ids["needsAttention"] not in table, "other statuses filtered out")
    check(text("#match-count").startswith("2 saga"), "2 compensated sagas")
    shot("02-list-compensated.png")
    driver.get(base + "/sagas?stalled=1")
    check(ids["running"] in text("main") and ids["completed"] not in text("main"), "the stalled filter")
    driver.get(base + "/sagas?q=" + ids["stuck"][:13])
    check(ids["stuck"] in text("main table.sagas") and text("#match-count").startswith("1 saga"), "search by id")
    driver.get(base + "/sagas?name=trip&version=2")
    check(ids["version2"] in text("main table.sagas") and text("#match-count").startswith("1 saga"), "the version filter")

    # 3. A compensated saga's page: the timeline drawn, retries, payload redacted, trace id, next.
    print("compensated saga")
    driver.get(base + "/sagas?status=compensated")
    click(By.LINK_TEXT, ids["compensatedAfterRetries"])
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "svg.gantt")))
    check("compensated" in text("#saga-status"), "status compensated")
    check(count("svg.gantt rect.bar.retrying") >= 2, "failed attempts drawn as retrying bars")
    check(count("svg.gantt line.wait.retry") >= 2, "retry delays drawn")
    check(count("svg.gantt rect.bar.ok-comp") >= 1, "the compensation drawn")
    check("hotel service timed out" in text("#timeline"), "the error in the timeline")
    payload = text("#payload")
    check("••••" in payload and "4111" not in payload, "cardNumber redacted")
    check("Ada Lovelace" in payload, "the rest of the payload shown")
    trace = text("#trace-id")
    check(len(trace) == 32 and all(c in "0123456789abcdef" for c in trace), "trace id from traceparent")
    check("finished" in text("#next"), "what happens next: finished")
    check(count("#retry-button") == 0, "no retry button on a finished saga")
    shot("03-saga-compensated.png")

    # 4. Its definition, drawn.
    print("definition")
    click(By.PARTIAL_LINK_TEXT, "trip version 1")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "svg.graph")))
    check("v2" in text("#versions"), "versions listed")
    check("v2 (1 saga)" in text("#versions"), "each version's sagas counted")
    check(count("svg.graph rect.step") == 4, "four steps drawn")
    check(count("svg.graph rect.step.pivot") == 1, "the pivot marked")
    check(count("svg.graph rect.comp") == 2, "two compensations drawn")
    shot("04-definition.png")
    driver.get(base + "/definitions")
    v2_link = driver.find_elements(By.CSS_SELECTOR, 'a[href="/sagas?name=trip&version=2"]')
    check(len(v2_link) == 1 and v2_link[0].text == "1", "the definitions page counts version 2's saga on its own row")
    v1_link = driver.find_elements(By.CSS_SELECTOR, 'a[href="/sagas?name=trip&version=1"]')
    check(len(v1_link) == 1 and int(v1_link[0].text) >= 6, "and version 1's on its own")
    shot("04-definitions.png")

    # 4b. A saga in a parallel group: each member's state, the members side by side.
    print("parallel group")
    driver.get(base + "/sagas/" + ids["parallel"])
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#parallel-group")))
    check("parallel group 'prepare': pack completed, check-credit running (attempt 1), gift-wrap skipped" in text("#saga-status"),
          "the status names each member's progress")
    check(count("#parallel-group li.member.st-completed") == 1 and count("#parallel-group li.member.st-running") == 1
          and count("#parallel-group li.member.st-skipped") == 1, "the members listed with their states")
    check("waiting for 1 member(s) of parallel group 'prepare'" in text("#next"), "what happens next: the running member")
    check(count("#steps svg.graph rect.step.member") == 3, "the definition drawn with the members")
    check(count("#steps svg.graph rect.step.member.st-running") == 1, "the running member drawn running")
    shot("04b-saga-parallel-group.png")
    click(By.PARTIAL_LINK_TEXT, "checkout version 1")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "svg.graph")))
    check(count("svg.graph rect.group") == 1 and count("svg.graph line.fork") == 2, "the group drawn with a fork and a join")
    tops = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg.graph rect.step.member')).map(function (r) { return r.getBoundingClientRect().top; })")
    check(len(tops) == 3 and max(tops) - min(tops) < 1, "the members side by side")
    check("when gift is true" in driver.execute_script("return document.querySelector('svg.graph text.step-when').textContent"),
          "the member's condition drawn")
    shot("04c-definition-parallel-group.png")

    # 4d. A saga waiting for a signal: what it waits for, until when, the command that approves.
    print("wait step")
    driver.get(base + "/sagas?status=waiting")
    check(ids["waiting"] in text("main table.sagas") and text("#match-count").startswith("1 saga"), "the waiting filter")
    click(By.LINK_TEXT, ids["waiting"])
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#wait")))
    check(count("h1 .badge.st-waiting") == 1, "the waiting badge")
    check("step 2 'manager-approval' for signal 'manager.approved' until " in text("#saga-status"),
          "the status names the signal and until when")
    check(text("#signal-command") == "saga signal " + ids["waiting"] + " manager.approved --data '{…}' --by <you>",
          "the command that approves")
    check("the saga is compensated" in text("#wait"), "what the timeout does")
    check("waiting for signal 'manager.approved'" in text("#next"), "what happens next: the signal")
    check(count("#retry-button") == 0, "nothing to retry on a waiting saga")
    check(count("#steps svg.graph rect.step.wait.st-waiting") == 1, "the wait drawn waiting")
    shot("04d-saga-waiting.png")
    click(By.PARTIAL_LINK_TEXT, "refund version 1")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "svg.graph")))
    check(count("svg.graph rect.step.wait") == 1, "the wait drawn as a wait")
    check("waits for signal 'manager.approved' · up to 24 h" in driver.execute_script(
        "return document.querySelector('svg.graph text.step-wait').textContent"), "its signal and timeout")
    check("signal 'manager.approved'" in driver.execute_script(
        "return document.querySelector('svg.graph text.signal').textContent"), "the signal beside the arrow to what follows")
    shot("04e-definition-wait.png")

    # 5. The dead-letter queue, read-only until logged in.
    print("dead letters")
    click(By.LINK_TEXT, "Dead letters")
    wait.until(EC.presence_of_element_located((By.ID, "dlq-count")))
    dlq = text("main")
    check("console-fixture-malformed-1" in dlq, "the malformed command is listed")
    check("not valid JSON" in dlq, "with its reason")
    check(count("button.requeue") == 0, "no requeue without logging in")
    shot("05-dlq.png")

    # 5b. The services that report in: the fixture's participant, live, handling every command.
    print("services")
    click(By.LINK_TEXT, "Services")
    wait.until(EC.presence_of_element_located((By.ID, "unhandled")))
    services = text("table.services")
    check("fixture" in services and "1 live" in services, f"the fixture's participant reports in, live: {services}")
    check("flight.book" in services and "refund.pay" in services, "with its commands")
    check("every command of the known definitions has a live handler" in text("#unhandled"), "no command without a handler")
    shot("05b-services.png")

    # Live: the saga retrying past its pivot moves on every second; its page follows, no reload.
    print("live updates")
    driver.get(base + "/sagas/" + ids["stuck"])
    wait.until(lambda d: d.execute_script("return document.body.dataset.sse") == "open")
    check("handled by service 'fixture': 1 process(es) report in" in text("#next"), "the next step names the service that runs it")
    driver.execute_script("window.__noReload = 7")
    before = text("#saga-status")
    wait.until(lambda d: int(d.execute_script("return document.body.dataset.events || '0'")) >= 2)
    wait.until(lambda d: text("#saga-status") != before)
    check(driver.execute_script("return window.__noReload") == 7, f"live: '{before}' became '{text('#saga-status')}' without a reload")
    check(count("#event-log li") >= 2, "the events are listed beside the page")

    # 6. Actions are refused without a session, across sites, and with a stale form.
    print("action safety")
    target = "/sagas/" + ids["needsAttention"] + "/retry"
    check(post(target, {"reason": "x", "csrf": "x"}, {"Origin": base}) == 401, "no session: 401")
    check(post(target, {"reason": "x", "csrf": "x"}, {"Origin": "http://evil.example"}) == 403, "another origin: 403")
    check(post(target, {"reason": "x"}, {}) == 403, "no Origin or Referer: 403")
    check(post("/login", {"name": "mallory", "token": "wrong", "next": "/"}, {"Origin": base}) == 401, "a wrong token: 401")

    # 7. Log in and retry the saga that needs attention; it finishes live, without a reload.
    print("retry with the token")
    driver.get(base + "/sagas/" + ids["needsAttention"])
    check("needs-attention" in text("#saga-status"), "the saga needs attention")
    check("503" in text("#failure-reason"), "with the reason")
    click(By.ID, "login-to-act")
    wait.until(EC.presence_of_element_located((By.ID, "login-form")))
    type_into("#name", "ci-operator")
    type_into("#token", token)
    click(By.ID, "login-button")
    wait.until(EC.presence_of_element_located((By.ID, "retry-button")))
    check(text("#operator-name") == "ci-operator", "logged in as ci-operator")
    check(token not in driver.page_source, "the token is not in the page")
    cookie = driver.get_cookie("saga_console_session")
    check(cookie and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict", "session cookie HttpOnly, SameSite=Strict")
    check(count("#resolve-button") == 1, "a saga that needs attention can also be resolved by hand")
    shot("06-saga-needs-attention.png")
    type_into("#retry-form input[name=reason]", "airline API fixed (console browser test)")
    click(By.ID, "retry-button")
    alert = wait.until(EC.alert_is_present())
    check("ci-operator" in alert.text, "the confirmation names who acts")
    alert.accept()
    wait.until(EC.presence_of_element_located((By.ID, "flash")))
    check("Retry requested" in text("#flash"), "the retry was accepted")
    wait.until(lambda d: d.execute_script("return document.body.dataset.sse") == "open")
    driver.execute_script("window.__noReload = 42")
    wait.until(lambda d: "compensated" in text("#saga-status"))
    check(driver.execute_script("return window.__noReload") == 42, "the page updated live, without a reload")
    check("retry requested by ci-operator" in text("#timeline"), "the operator's retry in the timeline")
    check(count("svg.gantt path.marker.operator") == 1, "the operator's action drawn")
    shot("07-saga-after-retry.png")

    # 7b. Signal the waiting saga: its form names the signal it waits for; data that is not a
    # JSON object is refused saying why; then the saga goes on and completes, live.
    print("signal with the token")
    driver.get(base + "/sagas/" + ids["waiting"])
    wait.until(EC.presence_of_element_located((By.ID, "signal-button")))
    check(driver.find_element(By.ID, "signal-name").get_attribute("value") == "manager.approved",
          "the signal form names the signal the saga waits for")
    shot("07b-saga-signal-form.png")
    type_into("#signal-data", "{approved: yes}")
    click(By.ID, "signal-button")
    alert = wait.until(EC.alert_is_present())
    check("ci-operator" in alert.text, "the signal's confirmation names who acts")
    alert.accept()
    wait.until(EC.presence_of_element_located((By.ID, "error")))
    check("the data is not a JSON object" in text("#error") and "at byte 1" in text("#error"),
          f"bad data refused with the reason: {text('#error')}")
    driver.get(base + "/sagas/" + ids["waiting"])
    wait.until(EC.presence_of_element_located((By.ID, "signal-button")))
    check("waiting" in text("#saga-status"), "a refused signal changed nothing")
    type_into("#signal-data", '{"approved": true, "approver": "ci-operator"}')
    click(By.ID, "signal-button")
    wait.until(EC.alert_is_present()).accept()
    wait.until(EC.presence_of_element_located((By.ID, "flash")))
    check("Signal delivered" in text("#flash"), "the signal was delivered")
    wait.until(lambda d: "completed" in text("#saga-status"))
    check(count("#signal-button") == 0, "no signal form once the saga went on")
    shot("07b-saga-after-signal.png")

    # 8. Requeue the dead letter (the participant dead-letters it again: it is still malformed).
    print("requeue")
    driver.get(base + "/dlq")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "button.requeue")))
    click(By.CSS_SELECTOR, "button.requeue")
    wait.until(EC.alert_is_present()).accept()
    wait.until(EC.presence_of_element_located((By.ID, "flash")))
    check("1 dead letter(s) requeued" in text("#flash"), "one dead letter requeued")
    shot("08-dlq-requeued.png")

    # 9. Drop it for good: it is malformed, so a requeue only brings it back.
    print("drop")
    for _ in range(40):
        driver.get(base + "/dlq")
        if count("button.drop") > 0:
            break
        time.sleep(0.25)
    click(By.CSS_SELECTOR, "button.drop")
    alert = wait.until(EC.alert_is_present())
    check("for good" in alert.text, "a drop asks for a confirmation")
    alert.accept()
    wait.until(EC.presence_of_element_located((By.ID, "flash")))
    check("Dead letter dropped" in text("#flash"), "the dead letter was dropped")
    driver.get(base + "/dlq")
    check("the dead-letter queue is empty" in driver.page_source, "and the queue is empty")
    print(f"browser: {checks} checks passed")
except Exception:
    try:
        driver.save_screenshot(os.path.join(shots, "failure.png"))
        print("failed on", driver.current_url, driver.execute_script(
            "return JSON.stringify({data: document.body.dataset, active: document.activeElement && document.activeElement.tagName, "
            + "status: (document.getElementById('saga-status') || {}).innerText})"))
        for entry in driver.get_log("browser"):
            print("  browser log:", entry)
    except Exception as error:
        print("could not describe the failure:", error)
    raise
finally:
    driver.quit()
PYTHON

log "checking the store with saga show --json"
SAGAKIT_STORE_URL="sqlite://$STORE" SAGAKIT_PREFIX="$PREFIX" "$BIN/saga" show --json "$(python3 -c "import json; print(json.load(open('$WORK/ids.json'))['needsAttention'])")" \
    2>/dev/null >"$WORK/show.json"
python3 - "$WORK/show.json" <<'PYTHON'
import json, sys
state = json.load(open(sys.argv[1]))["saga"]
retries = [r for r in state["history"] if r["outcome"] == "retryRequested"]
assert state["status"] == "compensated", f"the retried saga is {state['status']}, expected compensated"
assert len(retries) == 1, f"expected one retryRequested record, got {len(retries)}"
assert retries[0].get("actor") == "ci-operator", f"actor {retries[0].get('actor')}"
assert retries[0].get("reason") == "airline API fixed (console browser test)", f"reason {retries[0].get('reason')}"
print("store: the retried saga is compensated; its history records the retry by ci-operator with the reason")
PYTHON
SAGAKIT_STORE_URL="sqlite://$STORE" SAGAKIT_PREFIX="$PREFIX" "$BIN/saga" show --json "$(python3 -c "import json; print(json.load(open('$WORK/ids.json'))['waiting'])")" \
    2>/dev/null >"$WORK/show-signalled.json"
python3 - "$WORK/show-signalled.json" <<'PYTHON'
import json, sys
state = json.load(open(sys.argv[1]))["saga"]
assert state["status"] == "completed", f"the signalled saga is {state['status']}, expected completed"
assert state["payload"].get("approved") is True and state["payload"].get("approver") == "ci-operator", state["payload"]
signalled = [r for r in state["history"] if r.get("actor") == "ci-operator" and r["stepName"] == "manager-approval"]
assert len(signalled) == 1, f"expected the wait completed by ci-operator once, got {signalled}"
print("store: the signalled saga completed with the signal's data; its history records the signal by ci-operator")
PYTHON
if grep -qF "$(cat "$TOKEN_FILE")" "$WORK/console.log"; then
    log "the console printed the operator token"
    exit 1
fi
log "passed; screenshots in $SHOTS"
