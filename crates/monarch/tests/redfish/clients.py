"""Real Redfish clients against a monarch chassis, for crates/monarch/tests/redfish.rs.

Each subcommand does one thing with a client operators use and prints what it saw as one
JSON object; the Rust test decides whether that is right.

  crawl URL USER PASS            every resource reachable from the service root, and the
                                 status each answers without credentials and with a wrong
                                 password (requests, as sushy and the validator use)
  systems URL USER PASS          sushy: the systems and their power states
  reset URL USER PASS ID TYPE    sushy: reset a system, then read it back
  limits URL ADMIN PASS USER PASS  sessions of one user never end another's; trailing slashes;
                                 bad bodies get Redfish errors
  sse URL USER PASS ID EVENT     the Server-Sent Events stream: prints "connected" once it
                                 is open, then every event up to ID's first EVENT
"""

import json
import sys

import requests
import urllib3

urllib3.disable_warnings()


def crawl(url, user, password):
    base = url.rstrip("/")
    root = base.split("/redfish")[0]
    seen, todo = [], ["/redfish/v1/"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        r = requests.get(root + path, auth=(user, password), verify=False, timeout=60)
        if r.status_code != 200 or "json" not in r.headers.get("Content-Type", ""):
            continue
        stack = [r.json()]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                for k, x in v.items():
                    if k == "@odata.id" and isinstance(x, str) and x.startswith("/redfish/v1"):
                        todo.append(x.split("#")[0])
                    elif k != "Oem":
                        stack.append(x)
            elif isinstance(v, list):
                stack.extend(v)
    # Documents every client may read first, and actions' targets.
    seen += ["/redfish", "/redfish/v1/odata", "/redfish/v1/$metadata", "/redfish/v1/EventService/SSE"]
    out = {}
    for path in seen:
        anon = requests.get(root + path, verify=False, timeout=60, stream=True)
        wrong = requests.get(root + path, auth=(user, password + "x"), verify=False, timeout=60, stream=True)
        good = requests.get(root + path, auth=(user, password), verify=False, timeout=60, stream=True)
        out[path] = [anon.status_code, wrong.status_code, good.status_code]
        for r in (anon, wrong, good):
            r.close()
    return out


def connect(url, user, password):
    import sushy

    return sushy.Sushy(url, username=user, password=password, verify=False)


def systems(url, user, password):
    s = connect(url, user, password)
    out = {}
    for path in s.get_system_collection().members_identities:
        out[path] = str(s.get_system(path).power_state)
    return out


def reset(url, user, password, ident, kind):
    import sushy

    s = connect(url, user, password)
    system = s.get_system("/redfish/v1/Systems/" + ident)
    allowed = sorted(str(v) for v in system.get_allowed_reset_system_values())

    def progress():
        p = system.boot_progress
        return [str(p.last_state), str(p.last_state_updated_at)] if p else None

    before = progress()
    error = None
    try:
        system.reset_system(sushy.ResetType(kind))
    except sushy.exceptions.SushyError as e:
        error = str(e)
    system.refresh()
    return {
        "allowed": allowed,
        "error": error,
        "power_state": str(system.power_state),
        "boot_progress_before": before,
        "boot_progress": progress(),
    }


def sse(url, user, password, ident, until):
    root = url.rstrip("/").split("/redfish")[0]
    r = requests.get(
        root + "/redfish/v1/EventService/SSE", auth=(user, password), verify=False, stream=True, timeout=120
    )
    print("connected", flush=True)
    events = []
    for line in r.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data:"):
            continue
        ev = json.loads(line[len("data:"):])
        events.append(ev)
        record = ev["Events"][0]
        mine = record["OriginOfCondition"]["@odata.id"] == "/redfish/v1/Systems/" + ident
        if mine and record["Oem"]["Monarch"].get("event") == until:
            break
    r.close()
    return {"status": r.status_code, "content_type": r.headers.get("Content-Type"), "events": events}


def limits(url, admin, admin_pw, user, user_pw):
    root = url.rstrip("/").split("/redfish")[0]
    sessions = root + "/redfish/v1/SessionService/Sessions"

    def log_in(name, pw):
        r = requests.post(sessions, json={"UserName": name, "Password": pw}, verify=False, timeout=60)
        return r.status_code, r.headers.get("X-Auth-Token")

    status, token = log_in(admin, admin_pw)
    mine = [log_in(user, user_pw)[0] for _ in range(80)]
    still = requests.get(root + "/redfish/v1/Systems", headers={"X-Auth-Token": token}, verify=False, timeout=60)
    slash = requests.get(root + "/redfish/v1/Systems/", auth=(admin, admin_pw), verify=False, timeout=60)
    reset = root + "/redfish/v1/Systems/%s/Actions/ComputerSystem.Reset"
    first = slash.json()["Members"][0]["@odata.id"].rsplit("/", 1)[1]
    typed = requests.post(reset % first, json={"ResetType": 1}, auth=(admin, admin_pw), verify=False, timeout=60)
    huge = requests.post(
        reset % first, data=b"x" * (80 << 10), auth=(admin, admin_pw), verify=False, timeout=60
    )
    return {
        "admin_login": status,
        "user_logins": sorted(set(mine)),
        "admin_session_after": still.status_code,
        "trailing_slash": slash.status_code,
        "wrong_type": [typed.status_code, typed.json()["error"]["code"]],
        "huge_body": [huge.status_code, huge.headers.get("Content-Type"), huge.json()["error"]["code"]],
    }


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    result = {"crawl": crawl, "systems": systems, "reset": reset, "sse": sse, "limits": limits}[cmd](*args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
