#!/usr/bin/env python3
"""Writes the generated part of fuzz/corpus/ (run from anywhere; needs openssl and
python3's `cryptography`). The corpus is committed: this script records where it
came from and regenerates it. Inputs that libFuzzer found stay in the corpus too.
"""
import base64, json, os, ssl, subprocess, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.dirname(HERE)
REPO = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")
ID = "web.demo.serviceaccount.identity.weft.cluster.local"


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def sh(*args, cwd):
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True).stdout


def pki_seeds():
    with tempfile.TemporaryDirectory() as t:
        cnf = os.path.join(t, "ext.cnf")
        with open(cnf, "w") as f:
            f.write("[leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{ID},URI:spiffe://cluster.local/ns/demo/sa/web\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        sh("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=root.weft",
           "-days", "3650", "-addext", "basicConstraints=critical,CA:TRUE,pathlen:1",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=t)
        sh("openssl", "req", "-new", *ec, "-keyout", "web.key", "-out", "web.csr.der", "-outform", "DER",
           "-subj", f"/CN={ID}", "-addext", f"subjectAltName=DNS:{ID}", cwd=t)
        sh("openssl", "req", "-new", *ec, "-keyout", "x.key", "-out", "ip.csr.der", "-outform", "DER",
           "-subj", "/", "-addext", f"subjectAltName=DNS:{ID},IP:10.0.0.1", cwd=t)
        sh("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "r.key", "-out", "rsa.csr.der",
           "-outform", "DER", "-subj", f"/CN={ID}", "-addext", f"subjectAltName=DNS:{ID}", cwd=t)
        sh("openssl", "req", "-in", "web.csr.der", "-inform", "DER", "-out", "web.csr.pem", cwd=t)
        sh("openssl", "x509", "-req", "-in", "web.csr.pem", "-CA", "ca.pem", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", "web.pem", "-days", "3650", "-extfile", cnf, "-extensions", "leaf", cwd=t)
        sh("openssl", "x509", "-in", "web.pem", "-outform", "DER", "-out", "web.der", cwd=t)
        rd = lambda n: open(os.path.join(t, n), "rb").read()
        put("csr", "web.der", rd("web.csr.der"))
        put("csr", "ip-san.der", rd("ip.csr.der"))
        put("csr", "rsa.der", rd("rsa.csr.der"))
        put("cert", "chain.pem", rd("web.pem") + rd("ca.pem"))
        put("cert", "leaf.der", rd("web.der"))
        put("cert", "anchor.pem", rd("ca.pem"))


def client_hellos():
    def hello(sni, **kw):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for k, v in kw.items():
            setattr(ctx, k, v)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        s = ctx.wrap_bio(inc, out, server_hostname=sni)
        try:
            s.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return out.read()
    put("client_hello", "tls13-sni", hello(ID))
    put("client_hello", "tls12-only", hello("backend.demo.svc", maximum_version=ssl.TLSVersion.TLSv1_2))
    put("client_hello", "no-sni", hello(None))
    put("client_hello", "http1", b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n")
    put("client_hello", "h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def transport_headers():
    pre = b"transport.l5d.io/v1\r\n\r\n"
    frame = lambda body: pre + len(body).to_bytes(4, "big") + body
    name = b"backend.demo.svc.cluster.local"
    put("transport_header", "port-8080", frame(b"\x08" + varint(8080)))
    put("transport_header", "named-h2", frame(b"\x08" + varint(8080) + b"\x12" + varint(len(name)) + name
                                               + b"\x1a\x02\x12\x00"))
    put("transport_header", "h1-rest", frame(b"\x08" + varint(80) + b"\x1a\x02\x0a\x00") + b"GET / HTTP/1.1\r\n")
    put("transport_header", "bad-port", frame(b"\x08" + varint(70000)))


def paths():
    variants = ["/public/../admin/x", "/public/%2e%2e/admin/x", "/public/%2E%2E/admin/x",
                "/public/./../admin", "//admin", "/a%2Fb", "/a%5cb", "/%61dmin", "/public?q=1",
                "http://web.demo:8080/public/../admin?x=1", "*", "/a/b/../../..", "/%00", "/%zz",
                "/caf%C3%A9/", "/admin/x"]
    for i, p in enumerate(variants):
        put("http_path", f"path-{i:02}", bytes([0]) + p.encode())
    put("http_path", "keep-slashes", bytes([1]) + b"/a%2Fb/../c")
    put("http_path", "post", bytes([2]) + b"/admin/./x")


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def tokens():
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    key = serialization.load_pem_private_key(open(os.path.join(FUZZ, "token-key.pem"), "rb").read(), None)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    kid = hashlib.sha256(spki).hexdigest()

    def jwt(claims, kid=kid):
        h = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": kid}).encode())
        c = b64(json.dumps(claims).encode())
        r, s = decode_dss_signature(key.sign(f"{h}.{c}".encode(), ec.ECDSA(hashes.SHA256())))
        return f"{h}.{c}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    base = {"iss": "weft", "aud": "identity.l5d.io", "sub": "system:serviceaccount:demo:web",
            "jti": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "iat": 1795000000, "nbf": 1795000000, "exp": 1899000000}
    put("token", "join", jwt(base))
    put("token", "aud-array", jwt({**base, "aud": ["identity.l5d.io", "other"]}))
    put("token", "revoked", jwt({**base, "jti": "revoked-jti"}))
    put("token", "expired", jwt({**base, "exp": 1795000001}))
    put("token", "bad-subject", jwt({**base, "sub": "system:serviceaccount:demo"}))
    put("token", "k8s-bound", jwt({"aud": ["identity.l5d.io"], "sub": "system:serviceaccount:demo:web",
                                   "exp": 1899000000, "iat": 1795000000, "nbf": 1795000000,
                                   "kubernetes.io": {"namespace": "demo", "pod": {"name": "web-0", "uid": "u-1"},
                                                     "serviceaccount": {"name": "web", "uid": "u-2"}}},
                                  kid="other-key"))
    put("token", "not-a-jwt", "weft-join-token")


def yaml():
    src = os.path.join(REPO, "crates/weft/tests/fixtures/guide/policy.yaml")
    put("policy_yaml", "guide-policy.yaml", open(src, "rb").read())
    readme = open(os.path.join(REPO, "README.md")).read()
    blocks = readme.split("```yaml\n")[1:]
    for i, b in enumerate(blocks):
        put("policy_yaml", f"readme-{i}.yaml", b.split("```")[0])
    put("policy_yaml", "list-export.yaml", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: policy.linkerd.io/v1beta3\n"
        "  kind: Server\n  metadata: {name: web, namespace: demo}\n  spec:\n    podSelector: {matchLabels: {app: web}}\n"
        "    port: 8080\n    proxyProtocol: HTTP/1\n")
    put("policy_yaml", "anchors.yaml", "a: &a [1, 2]\nb: [*a, *a]\n---\nkind: Server\n")


if __name__ == "__main__":
    pki_seeds()
    client_hellos()
    transport_headers()
    paths()
    tokens()
    yaml()
