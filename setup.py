"""Packaging for cyme, the Celery instance manager."""

from setuptools import find_namespace_packages, setup

setup(
    name="cyme",
    version="0.1.0",
    description="Celery instance manager: supervise clusters of Celery workers over HTTP",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    # package_dir {"": "."} makes an editable install add the project root to
    # sys.path (a static .pth), which is where twistd looks for
    # twisted/plugins/; the import-hook finder would hide the plugin.
    package_dir={"": "."},
    packages=find_namespace_packages(include=["cyme", "cyme.*"]) + ["twisted.plugins"],
    package_data={
        "cyme": ["py.typed"],
        "cyme.amqp.specs": ["*.xml"],
        "twisted.plugins": ["cyme_plugin.py"],
    },
    include_package_data=True,
    install_requires=[
        # 25.5: a Request can leave POST bodies to the API (JSON errors);
        # [tls]: pyOpenSSL for amqps:// brokers (cyme.amqp.tls).
        "twisted[tls]>=25.5",
        "klein>=24.8",
        "txamqp>=0.8.2",
        "celery>=5.3",
        "attrs>=23.1",
        # The host name check of amqps:// brokers' certificates.
        "service-identity>=24.1",
        # The bus's seal (Fernet; MultiFernet for key rotation, dated
        # tokens), and load_pem_x509_certificates for a --broker-ca bundle.
        "cryptography>=42",
        "treq>=24.9",
        # The webhook's HTTP transport (cyme.tasks.webhook).
        "urllib3>=2.6",
        # Workers forked by the fork server take their own names (ps, and
        # the branch recognising them after a restart).
        "setproctitle>=1.3",
        # The cyme command (cyme.cli).
        "click>=8.1",
        # GET /metrics: histograms, and the collector over the branch's state
        # (cyme.metrics, cyme.api.prometheus).
        "prometheus_client>=0.20",
    ],
    extras_require={
        # What the tests need besides cyme: the OpenAPI document's validator
        # and the fuzzer run against a real branch (tests/test_fuzz.py).
        "test": [
            "openapi-spec-validator>=0.7",
            "schemathesis>=4.1",
        ],
        # The benchmarks' charts of scaling curves (bench/_plot.py).
        "bench": [
            "matplotlib>=3.8",
        ],
    },
    entry_points={
        "console_scripts": [
            "cyme-branch = cyme.script:main",
            "cyme = cyme.cli:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Framework :: Celery",
        "Programming Language :: Python :: 3",
    ],
)
