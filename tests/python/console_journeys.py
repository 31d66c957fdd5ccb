#!/usr/bin/env python3
"""Journeys through Weir's web console in a real headless Chromium (Debian's chromium and chromium-driver, driven
over WebDriver by Selenium). Run by tests/broker/console.rs, one journey per call, against a gateway it started:

    console_journeys.py JOURNEY --url http://127.0.0.1:PORT/ --data-dir DIR --mqtt-port N [--shots DIR]

Every wait is bounded (WebDriverWait); a failed check raises, prints why and exits non-zero. With --shots, a
screenshot of each page visited is saved there (PNG).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 15  # seconds: the bound of every wait
ADMIN = ("root", "correct horse battery")


def gone(element):
    """Whether a page element has been replaced by a new page (its node no longer exists)."""
    try:
        element.tag_name
        return False
    except WebDriverException:
        return True


class Console:
    def __init__(self, args, downloads):
        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("WEIR_CHROMIUM", "/usr/bin/chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     f"--user-data-dir={tempfile.mkdtemp(prefix='weir-chromium-')}"):
            options.add_argument(flag)
        options.add_experimental_option("prefs", {"download.default_directory": downloads,
                                                  "download.prompt_for_download": False})
        service = Service(os.environ.get("WEIR_CHROMEDRIVER", "/usr/bin/chromedriver"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(WAIT)
        self.url = args.url.rstrip("/")
        self.shots = args.shots
        self.downloads = downloads

    def open(self, path):
        self.driver.get(self.url + path)

    def path(self):
        return "/" + self.driver.current_url.split("/", 3)[3] if self.driver.current_url.count("/") >= 3 else "/"

    def wait_for(self, what, condition):
        try:
            # While a page is replaced, ChromeDriver reports elements of the old one as stale or, under load, as
            # "Node with given id does not belong to the document": both only mean "not yet", so keep waiting.
            ignored = (WebDriverException,)
            return WebDriverWait(self.driver, WAIT, ignored_exceptions=ignored).until(condition)
        except Exception as e:
            raise AssertionError(f"timed out waiting for {what} on {self.driver.current_url}: {e}") from None

    def wait_text(self, text):
        self.wait_for(f"the text {text!r}", lambda d: text in d.find_element(By.TAG_NAME, "body").text)

    def fill(self, form_action, **fields):
        form = self.driver.find_element(By.CSS_SELECTOR, f"form[action='{form_action}']")
        for name, value in fields.items():
            element = form.find_element(By.NAME, name)
            if element.tag_name == "select":
                element.find_element(By.CSS_SELECTOR, f"option[value='{value}']").click()
            else:
                element.clear()
                element.send_keys(value)
        return form

    def submit(self, form_action, navigates=True, **fields):
        """Fills and submits a form, and waits until the page it leads to has replaced this one (a page that
        shows the same text again, a second failed sign-in say, must not pass for the new one)."""
        form = self.fill(form_action, **fields)
        old = self.driver.find_element(By.TAG_NAME, "html")
        form.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
        if navigates:
            self.wait_for("the next page", lambda d: gone(old))

    def shot(self, name):
        if self.shots:
            os.makedirs(self.shots, exist_ok=True)
            self.driver.save_screenshot(os.path.join(self.shots, f"{name}.png"))

    def no_alert(self):
        try:
            text = self.driver.switch_to.alert.text
        except NoAlertPresentException:
            return
        raise AssertionError(f"a script ran: alert {text!r}")

    def sign_in(self, user=ADMIN[0], password=ADMIN[1]):
        self.open("/login")
        self.submit("/login", username=user, password=password)
        self.wait_for("the overview", EC.title_contains("Overview"))

    def sign_out(self):
        self.driver.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
        self.wait_for("the sign-in page", EC.title_contains("Sign in"))


def first_run(c, args):
    c.open("/")
    c.wait_for("the first-run page", EC.title_contains("First run"))
    c.shot("first-run")
    c.submit("/setup", code="wrong-code", username="root", password=ADMIN[1], again=ADMIN[1])
    c.wait_text("not the setup code")
    with open(os.path.join(args.data_dir, "setup-code")) as f:
        code = f.read().strip()
    c.submit("/setup", code=code, username=ADMIN[0], password=ADMIN[1], again=ADMIN[1])
    c.wait_for("the overview", EC.title_contains("Overview"))
    assert not os.path.exists(os.path.join(args.data_dir, "setup-code")), "the setup code is consumed"
    c.wait_for("live figures", lambda d: d.find_element(By.CSS_SELECTOR, "[data-key='in_rate']").text != "–")
    c.shot("overview")
    c.sign_out()
    c.shot("sign-in")
    c.sign_in()
    c.sign_out()
    for _ in range(5):  # the free failures: people mistype
        c.submit("/login", username=ADMIN[0], password="not the password")
        c.wait_text("Wrong user name or password")
    # From here each failure holds the address back for longer (1 s, 2 s, 4 s, ...): the right password sent just
    # after one is refused. On a loaded machine a page load can outlast the first delays, so fail again (and
    # sign out if it got in) until the delay outgrows a page load; bounded.
    body = lambda d: d.find_element(By.TAG_NAME, "body").text
    for _ in range(8):
        c.submit("/login", username=ADMIN[0], password="not the password")
        c.wait_for("an answer", lambda d: "Wrong user name or password" in body(d) or "Too many failed" in body(d))
        c.submit("/login", username=ADMIN[0], password=ADMIN[1])
        c.wait_for("an answer", lambda d: "Too many failed attempts" in body(d) or "Overview" in d.title)
        if "Too many failed attempts" in body(c.driver):
            break
        c.sign_out()
    else:
        raise AssertionError("the right password was never held back after repeated failures")


def certificates(c, args):
    c.sign_in()
    c.open("/certs")
    c.shot("certificates")
    c.submit("/certs/issue", name="press-7", sans="DNS:press-7.plant", days="30", key_type="p384",
             format="p12", p12_password="p12 passphrase", navigates=False)
    target = os.path.join(c.downloads, "press-7.p12")
    c.wait_for("the PKCS#12 download", lambda d: os.path.exists(target) and os.path.getsize(target) > 0)
    check = subprocess.run(["openssl", "pkcs12", "-info", "-noout", "-passin", "pass:p12 passphrase",
                            "-in", target], capture_output=True, text=True, timeout=WAIT)
    assert check.returncode == 0, f"openssl cannot open the PKCS#12 file: {check.stderr}"
    c.open("/certs")
    c.wait_text("press-7")
    c.driver.execute_script("window.confirm = () => true;")
    c.driver.find_element(By.CSS_SELECTOR, "form[action='/certs/revoke'] button").click()
    c.wait_text("Revoked press-7")


def mqtt(args, *argv, timeout=WAIT):
    return subprocess.run(list(argv) + ["-h", "127.0.0.1", "-p", str(args.mqtt_port)], capture_output=True,
                          text=True, timeout=timeout)


def access(c, args):
    c.sign_in()
    c.open("/users")
    c.submit("/users/add", username="plc1", password="plc password 1", roles="")
    c.wait_text("User plc1 added")
    c.submit("/rules/add", subject="user:plc1", effect="allow", action="both", filter="plant/#")
    c.wait_text("added")
    c.shot("users")
    c.fill("/users", test_user="plc1", test_client="c", test_topic="plant/press")
    c.driver.find_element(By.CSS_SELECTOR, "form[action='/users'] button").click()
    c.wait_text("user plc1 may publish to plant/press and may receive it")
    allowed = mqtt(args, "mosquitto_pub", "-V", "mqttv311", "-u", "plc1", "-P", "plc password 1", "-t",
                   "plant/press", "-m", "1", "-q", "1")
    assert allowed.returncode == 0, f"allowed publish failed: {allowed.stderr}"
    denied = mqtt(args, "mosquitto_sub", "-V", "mqttv5", "-u", "plc1", "-P", "plc password 1", "-t",
                  "office/#", "-C", "1", "-W", "3")
    assert "subscription requests were denied" in (denied.stdout + denied.stderr), \
        f"a subscription no rule allows was not refused: rc {denied.returncode} {denied.stdout} {denied.stderr}"
    wrong = mqtt(args, "mosquitto_pub", "-u", "plc1", "-P", "wrong", "-t", "plant/press", "-m", "1")
    assert wrong.returncode != 0, "a wrong password was accepted"


def xss(c, args):
    c.sign_in()
    c.open("/users")
    payload = "<img src=x onerror=alert(1)>"
    c.submit("/users/add", username=payload, password="correct horse battery", roles="")
    c.wait_text(f"User {payload} added")
    c.no_alert()
    c.open("/audit")
    c.wait_text(payload)
    c.no_alert()
    assert not c.driver.find_elements(By.CSS_SELECTOR, "main img"), "markup from data was rendered"
    c.shot("audit")


def live_topic(c, args):
    c.sign_in()
    c.open("/topics/live?filter=plant%2F%23")
    c.wait_for("the live view to connect", lambda d: d.find_element(By.ID, "live").get_attribute("data-open") == "yes")
    xss = "<img src=x onerror=alert(1)>"
    for topic, payload in (("plant/press-1/temp", "21.5"), ("plant/press-1/note", xss), ("office/door", "open")):
        sent = mqtt(args, "mosquitto_pub", "-t", topic, "-m", payload, "-q", "1")
        assert sent.returncode == 0, sent.stderr
    c.wait_text("plant/press-1/temp")
    c.wait_text(xss)
    c.no_alert()
    assert not c.driver.find_elements(By.CSS_SELECTOR, "#live img"), "a payload was rendered as markup"
    assert "office/door" not in c.driver.find_element(By.ID, "live").text, "outside the filter"
    c.shot("topics-live")
    c.driver.find_element(By.ID, "live-pause").click()
    mqtt(args, "mosquitto_pub", "-t", "plant/paused", "-m", "held", "-q", "1")
    c.wait_text("new messages held")
    assert "plant/paused" not in c.driver.find_element(By.ID, "live").text, "shown while paused"
    c.driver.find_element(By.ID, "live-pause").click()
    c.wait_text("plant/paused")
    # The topic tree follows the journal's index, which the writer extends every 250 ms: reload until it has it.
    c.wait_for("the topic in the tree", lambda d: (d.get(c.url + "/topics?prefix=plant") or True)
               and "press-1/" in d.find_element(By.TAG_NAME, "main").text)
    c.shot("topics")


def history_chart(c, args):
    for i in range(30):
        sent = mqtt(args, "mosquitto_pub", "-t", "sensor/press-1/temp", "-m", f'{{"t": {20 + i % 7}}}', "-q", "1")
        assert sent.returncode == 0, sent.stderr
    c.sign_in()
    c.open("/history?filter=sensor%2F%23&field=%2Ft")
    c.wait_for("the chart", lambda d: d.find_element(By.ID, "chart").get_attribute("data-drawn") == "30")
    assert c.driver.find_elements(By.CSS_SELECTOR, "#chart canvas"), "uPlot drew a canvas"
    c.shot("history")
    c.driver.find_element(By.CSS_SELECTOR, "a[href*='format=csv']").click()
    target = os.path.join(c.downloads, "weir-history.csv")
    c.wait_for("the CSV download", lambda d: os.path.exists(target) and open(target).read().count("\n") == 31)
    with open(target) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("id,time,topic"), lines[0]
    assert all("sensor/press-1/temp" in line for line in lines[1:]), lines[:3]


def clients(c, args):
    watcher = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(args.mqtt_port), "-V", "mqttv5",
                                "-i", "press-line-1", "-t", "plant/#", "-q", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c.sign_in()
        c.wait_for("the client to be listed", lambda d: (d.get(c.url + "/clients?q=press-line") or True)
                   and "press-line-1" in d.find_element(By.TAG_NAME, "main").text)
        c.wait_text("plant/#")
        c.shot("clients")
        c.driver.find_element(By.CSS_SELECTOR, "form[action='/clients/disconnect'] button").click()
        c.wait_text("press-line-1 is disconnected")
        # The console closed its connection: mosquitto_sub ends (TimeoutExpired otherwise).
        watcher.wait(timeout=WAIT)
        c.open("/presence?client=press-line-1")
        c.wait_text("disconnected by an administrator")
        c.shot("presence")
    finally:
        watcher.kill()


def kafka(c, args):
    c.sign_in()
    c.open("/kafka")
    c.wait_text("No upstream yet")
    c.driver.find_element(By.LINK_TEXT, "Add an upstream").click()
    c.wait_for("the upstream form", EC.title_contains("Add an upstream"))
    c.submit("/kafka/upstreams/add", name="main", bootstrap=args.kafka_bootstrap)
    c.wait_text("Upstream main added")
    c.submit("/kafka/upstreams/test")
    c.wait_text("Connection test: upstream main reached")
    c.wait_text("1 broker")
    c.open("/kafka/upstreams/edit?name=main")
    c.wait_for("the upstream's form", EC.title_contains("Upstream main"))
    c.shot("kafka-upstream")
    c.open("/kafka")
    c.driver.find_element(By.LINK_TEXT, "Add an uplink route (MQTT → Kafka)").click()
    c.wait_for("the route form", EC.title_contains("Add an uplink route"))
    # A bad filter comes back with the reason beside its field, and what was typed.
    c.submit("/kafka/uplinks/add", name="plant", filter="plant/#/temp", topic="plant", key="topic", **{"from": "oldest"})
    c.wait_for("the reason beside the filter", lambda d: "not a valid MQTT topic filter" in d.find_element(By.ID, "filter-error").text)
    assert c.driver.find_element(By.NAME, "filter").get_attribute("aria-invalid") == "true"
    assert c.driver.find_element(By.NAME, "name").get_attribute("value") == "plant", "what was typed is kept"
    c.shot("kafka-refused")
    c.submit("/kafka/uplinks/add", filter="plant/#")
    c.wait_text("Route plant added")
    for i in range(5):
        sent = mqtt(args, "mosquitto_pub", "-t", "plant/press-1/temp", "-m", f"t={20 + i}", "-q", "1")
        assert sent.returncode == 0, sent.stderr
    # The status refreshes itself: no reload.
    forwarded = "#route-status tr[data-route='plant'] [data-key='forwarded']"
    c.wait_for("the route to forward all five", lambda d: d.find_element(By.CSS_SELECTOR, forwarded).text == "5")
    c.wait_for("the route to be idle", lambda d: d.find_element(
        By.CSS_SELECTOR, "#route-status tr[data-route='plant'] td.state").get_attribute("data-state") == "idle")
    assert "never" not in c.driver.find_element(By.CSS_SELECTOR, "#route-status tr[data-route='plant']").text, \
        "an acknowledgement time is shown"
    c.shot("kafka")
    c.driver.find_element(By.CSS_SELECTOR, "#routes form[action='/kafka/routes/pause'] button").click()
    c.wait_text("Route plant paused")
    c.wait_for("the route to stop", lambda d: d.find_element(
        By.CSS_SELECTOR, "#route-status tr[data-route='plant'] td.state").get_attribute("data-state") == "paused")
    # Stopped: what is published now waits in the journal (tests/broker/console.rs reads Kafka afterwards).
    sent = mqtt(args, "mosquitto_pub", "-t", "plant/press-1/temp", "-m", "while paused", "-q", "1")
    assert sent.returncode == 0, sent.stderr
    assert c.driver.find_elements(By.CSS_SELECTOR, "#routes form[action='/kafka/routes/resume']"), "Resume is offered"


JOURNEYS = {"live_topic": live_topic, "history_chart": history_chart, "clients": clients, "first_run": first_run, "certificates": certificates, "access": access, "xss": xss,
            "kafka": kafka}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("journey", choices=sorted(JOURNEYS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--shots")
    parser.add_argument("--kafka-bootstrap", help="HOST:PORT of the test Kafka broker (journey kafka)")
    args = parser.parse_args()
    downloads = tempfile.mkdtemp(prefix="weir-downloads-")
    c = Console(args, downloads)
    try:
        JOURNEYS[args.journey](c, args)
    except Exception:
        c.shot(f"failed-{args.journey}")
        print(f"page at failure: {c.driver.current_url}\n{c.driver.find_element(By.TAG_NAME, 'body').text}",
              file=sys.stderr)
        raise
    finally:
        c.driver.quit()
    print(f"{args.journey}: ok")


if __name__ == "__main__":
    main()
