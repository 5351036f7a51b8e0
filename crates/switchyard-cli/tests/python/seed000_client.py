"""A plain `requests` client speaking microservices_connector 0.3.7's wire format.

It plays seed 000's tutorial sender against `yard serve example` and checks every documented
result. Usage: python3 seed000_client.py http://127.0.0.1:PORT
"""
import json
import sys

import requests


class Friend:
    """The seed's sender, reduced to its wire format."""

    def __init__(self, name, address):
        self.name, self.address, self.rules = name, address, {}

    def setRule(self, rule, token=None):
        self.rules[rule] = token

    def send(self, rule, *args, **kwargs):
        body = {"args": list(args), "kwargs": kwargs, "token": self.rules.get(rule)}
        r = requests.post(self.address + rule, json=body, timeout=10)
        assert r.status_code == 200, (rule, r.status_code, r.text)
        assert r.headers["Content-Type"] == "application/json", r.headers["Content-Type"]
        values = r.json()
        return values[0] if len(values) == 1 else tuple(values)

    def json(self, rule, method="POST", **kwargs):
        r = requests.request(method, self.address + rule, json=kwargs, timeout=10)
        assert r.status_code == 200, (rule, r.status_code, r.text)
        values = r.json()
        return values[0] if len(values) == 1 else values


def testservice(value):
    return {"Purpose": "For test only", "empty": None, "name": "test", "value": value}


def main(address):
    f = Friend("app1", address)
    assert f.send("/helloworld", "Mr. Developer") == "Welcome Mr. Developer"
    assert f.send("/str", "A variable value", key="A keyword variable value") == "A variable value-A keyword variable value"
    assert f.send("/str2", "A variable value", key="A keyword variable value") == (
        "A variable value", "A keyword variable value", "A variable value-A keyword variable value")
    x = f.send("/int", 2018, key=312)
    assert x == 2330 and type(x) is int
    x = f.send("/float", 2.018, key=3.12)
    assert x == 5.138 and type(x) is float
    x, y, z = f.send("/int3", 3.1427, key=1000000000)
    assert (x, y, z) == (1000000003.1427, 1000000000000000000, 9.87656329), (x, y, z)
    assert type(y) is int
    assert f.send("/list", [12, 34, 45], key=["abc", "zyz"]) == [12, 34, 45, "abc", "zyz"]
    assert f.send("/dict", {"keyword": ["anything"]}, key={"int": 20, "str": "adfafsa", "float": 0.2323}) == {
        "dict": {"keyword": ["anything"]}, "float": 0.2323, "int": 20, "str": "adfafsa"}
    assert f.send("/list3", {"keyword": ["anything"]}, key=["abc", "zyz"]) == (
        {"keyword": ["anything"]}, ["abc", "zyz", "other value"], None)
    assert f.send("/None", [12, 34, 45], key=["abc", "zyz"]) is None

    key = {"int": 20, "str": "adfafsa", "float": 0.2323}
    r = requests.post(address + "/class", json={"args": [{"keyword": ["anything"]}], "kwargs": {"key": key}, "token": None})
    assert r.status_code == 401, r.status_code
    f.setRule("/class", token="123456")
    assert f.send("/class", {"keyword": ["anything"]}, key=key) == testservice({"keyword": ["anything"]})
    f.setRule("/class2", token="123456")
    assert f.send("/class2", {"keyword": ["anything"]}, key=key) == (testservice(key), {"keyword": ["anything"]}, None)
    f.setRule("/class3", token="123456")
    t1, t2 = testservice("value1"), testservice("value2")
    x, y, z = f.send("/class3", [t1, t2], key={"t1": t1, "t2": t2, "list": [t1, t2]})
    assert x == testservice({"t1": t1, "t2": t2, "list": [t1, t2]})
    assert y == testservice([t1, t2])
    assert z == [y, x]

    assert f.json("/json", a=12, b="This is a text", c={"dict": "a dict"}) == {"1": 12, "2": "This is a text", "3": {"dict": "a dict"}}
    assert f.json("/json1", method="GET", a={"dict": "a only dict"}) == {"dict": "a only dict"}
    assert f.json("/json1", a={"dict": "a only dict"}) == {"dict": "a only dict"}

    r = requests.post(address + "/nope", json={"args": []})
    assert r.status_code == 404 and "error" in r.json()
    r = requests.post(address + "/int", data="{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed" in r.json()["error"]["message"]
    print("python client: all seed 000 results match")


if __name__ == "__main__":
    main(sys.argv[1])
