#!/usr/bin/env bash
# A throw-away certificate authority for the TLS tests (scripts/rabbitmq-tls.sh, scripts/postgres-tls.sh):
#
#   scripts/test-ca.sh DIR    writes to DIR: ca.pem/ca.key (the test CA), other-ca.pem (an unrelated CA,
#                             for "wrong CA" checks), server.pem/server.key (localhost and 127.0.0.1,
#                             signed by the test CA), client.pem/client.key (a client certificate)
#
# Certificates are valid for two days; keys are readable by their owner only.
set -euo pipefail

dir="${1:?usage: $0 DIR}"
mkdir -p "$dir"
cd "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=SagaKit test CA" \
    -keyout ca.key -out ca.pem >/dev/null 2>&1
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=SagaKit unrelated CA" \
    -keyout other-ca.key -out other-ca.pem >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr >/dev/null 2>&1
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext \
    -out server.pem >/dev/null 2>&1
printf 'extendedKeyUsage=clientAuth\n' >client.ext
openssl req -newkey rsa:2048 -nodes -subj "/CN=sagakit-client" -keyout client.key -out client.csr >/dev/null 2>&1
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext \
    -out client.pem >/dev/null 2>&1
chmod 0644 ca.pem other-ca.pem server.pem client.pem
