"""Trust: Ed25519-signed bundles that devices and servers refuse once changed, HTTPS with certificate
checks, and no bearer token in clear text to another host."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from neurosurgeon.runtime import signing
from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor
from neurosurgeon.runtime.client import InferenceClient
from neurosurgeon.runtime.errors import BundleError, NeurosurgeonError
from neurosurgeon.runtime.mobile import MobileRuntime
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.serving import start_server
from neurosurgeon.tools import zoo
from neurosurgeon.tools.verify import reference_outputs

from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.cli import main

# RFC 8032, section 7.1, TEST 1 and TEST 2
RFC_VECTORS = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
]


@pytest.mark.parametrize("secret, public, message, signature", RFC_VECTORS)
def test_ed25519_matches_rfc_8032(secret, public, message, signature):
    seed, message = bytes.fromhex(secret), bytes.fromhex(message)
    assert signing.public_key(seed).hex() == public
    assert signing.sign(seed, message).hex() == signature
    assert signing.verify(bytes.fromhex(public), message, bytes.fromhex(signature))
    assert not signing.verify(bytes.fromhex(public), message + b"!", bytes.fromhex(signature))


def test_ed25519_and_pem_agree_with_the_cryptography_package(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (tmp_path / "k.pub.pem").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    seed, public = signing.read_private_key(tmp_path / "k.pem"), signing.read_public_key(tmp_path / "k.pub.pem")
    message = os.urandom(5000)
    assert signing.sign(seed, message) == key.sign(message)  # Ed25519 is deterministic
    assert signing.verify(public, message, key.sign(message))
    # and the other way: what neurosurgeon keygen writes, cryptography reads
    assert main(["keygen", "-o", str(tmp_path / "ours.pem")]) == 0
    assert (tmp_path / "ours.pem").stat().st_mode & 0o777 == 0o600
    ours = serialization.load_pem_private_key((tmp_path / "ours.pem").read_bytes(), None)
    loaded = serialization.load_pem_public_key((tmp_path / "ours.pub.pem").read_bytes())
    ours_seed = signing.read_private_key(tmp_path / "ours.pem")
    loaded.verify(signing.sign(ours_seed, message), message)  # raises if it does not verify
    assert ours.sign(message) == signing.sign(ours_seed, message)
    with pytest.raises(signing.SigningKeyError, match="no PEM 'PRIVATE KEY' block"):
        signing.read_private_key(tmp_path / "k.pub.pem")


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("signed")
    assert main(["keygen", "-o", str(root / "key.pem")]) == 0
    assert main(["keygen", "-o", str(root / "other.pem")]) == 0
    model = zoo.build("lenet", width=0.25)
    compile_model(model, root / "b", CompileOptions("x86-host", "x86-host", progress=False, sign_key=root / "key.pem"),
                  name="lenet")
    compile_model(model, root / "unsigned", CompileOptions("x86-host", "x86-host", progress=False), name="lenet")
    return root, model


def tampered(root: Path, dest: Path) -> Path:
    """The signed bundle with one artifact changed and the manifest rewritten to match it: what someone
    who can write files but does not hold the key can make."""
    copy = shutil.copytree(root / "b", dest)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["artifacts"]["x86-host"][1]
    artifact = copy / entry["file"]
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    entry["sha256"] = hashlib.sha256(artifact.read_bytes()).hexdigest()
    entry["bytes"] = artifact.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return copy


def test_a_signed_bundle_loads_and_a_changed_one_is_refused(signed, tmp_path):
    root, _ = signed
    trusted = signing.read_public_key(root / "key.pub.pem")
    bundle = Bundle(root / "b", trust_key=trusted)
    SegmentExecutor(bundle, "mobile").load(1)
    changed = tampered(root, tmp_path / "changed")
    SegmentExecutor(Bundle(changed), "mobile").load(1)  # without a trusted key the sums agree: it loads
    with pytest.raises(BundleError, match="does not verify with the trusted key") as err:
        Bundle(changed, trust_key=trusted)
    assert "\n" not in str(err.value)
    with pytest.raises(BundleError, match="does not verify"):
        Bundle(root / "b", trust_key=signing.read_public_key(root / "other.pub.pem"))
    with pytest.raises(BundleError, match="not signed"):
        Bundle(root / "unsigned", trust_key=trusted)
    Bundle(root / "unsigned")  # no key configured: unsigned is accepted
    # the runtime files the manifest lists are checked too
    copy = shutil.copytree(root / "b", tmp_path / "runtime")
    (copy / "neurosurgeon_runtime" / "planner.py").write_text("raise SystemExit('not ours')\n")
    with pytest.raises(BundleError, match="runtime file does not match the manifest"):
        Bundle(copy, trust_key=trusted)


def test_run_py_and_the_server_refuse_a_changed_bundle_before_loading_it(signed, tmp_path):
    root, _ = signed
    changed = tampered(root, tmp_path / "changed")
    for bundle, code in ((root / "b", 0), (changed, 2)):
        run = subprocess.run([sys.executable, "-m", "neurosurgeon.runtime", "run", str(bundle), "--trust-key",
                              str(root / "key.pub.pem"), "--cut", "all"], capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == code, run.stderr
    assert "does not verify with the trusted key" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    with start_server(root / "b", extra_args=["--trust-key", str(root / "key.pub.pem")]):
        pass
    with pytest.raises(NeurosurgeonError, match="does not verify with the trusted key"), \
            start_server(changed, extra_args=["--trust-key", str(root / "key.pub.pem")]):
        pass


def test_openssl_keys_sign_bundles(signed, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl here")
    _, model = signed
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "k.pem")], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "k.pem"), "-pubout", "-out", str(tmp_path / "k.pub")],
                   check=True)
    compile_model(model, tmp_path / "b", CompileOptions("x86-host", "x86-host", progress=False,
                                                        sign_key=tmp_path / "k.pem"), name="lenet")
    Bundle(tmp_path / "b", trust_key=signing.read_public_key(tmp_path / "k.pub"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    import trustme

    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
    return root


def test_https_with_a_trusted_ca_and_a_clear_failure_without(signed, tls, tmp_path):
    root, model = signed
    bundle = Bundle(root / "b")
    feeds = random_inputs(bundle.inputs, seed=1)
    reference = reference_outputs(model, feeds)
    pem = str(tls / "server.pem")
    with start_server(bundle.path, token="s3cret", extra_args=["--ssl-certfile", pem, "--ssl-keyfile", pem],
                      ca_file=tls / "ca.pem") as server:
        assert server.url.startswith("https://127.0.0.1:")
        ok = MobileRuntime(bundle, server.url, token="s3cret", ca_file=str(tls / "ca.pem"))
        outputs, record = ok.infer(feeds, 0)
        assert not record.fell_back and record.upload_bytes > 0
        np.testing.assert_allclose(outputs["output"], reference["output"], rtol=1e-4, atol=1e-5)
        # no CA file: the system's CAs do not know this one; the mobile side says so and answers itself
        strict = MobileRuntime(bundle, server.url, token="s3cret")
        outputs, record = strict.infer(feeds, 0)
        assert record.fell_back and "TLS certificate does not verify" in record.fallback_reason
        np.testing.assert_allclose(outputs["output"], reference["output"], rtol=1e-4, atol=1e-5)


def test_no_token_in_clear_text_to_another_host():
    with pytest.raises(NeurosurgeonError, match="refusing to send the bearer token in clear text to 192.0.2.7"):
        InferenceClient("http://192.0.2.7:8000", token="s3cret")
    InferenceClient("http://192.0.2.7:8000", token="s3cret", allow_plain_token=True)  # insisted: allowed
    InferenceClient("http://127.0.0.1:8000", token="s3cret")  # this machine: allowed
    InferenceClient("https://192.0.2.7:8000", token="s3cret")  # encrypted: allowed
