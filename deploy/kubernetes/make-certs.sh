#!/usr/bin/env bash
# Make the certificates of a pybkd builder in Kubernetes (mutual TLS): a CA, a server
# certificate valid for every pod's stable name (pybkd-N.pybkd.NAMESPACE.svc and
# *.pybkd.NAMESPACE.svc[.cluster.local]), and one client certificate.
#
#   deploy/kubernetes/make-certs.sh NAMESPACE OUTDIR [CLIENT_NAME]
#
# OUTDIR gets ca.crt, ca.key (keep it offline), tls.crt, tls.key (the server's: the
# pybkd-tls secret) and client.crt, client.key (give them to `pybk --tlscert/--tlskey`, or
# put them with ca.crt in a --tlsdir as ca.pem, cert.pem, key.pem). Then:
#   kubectl -n NAMESPACE create secret generic pybkd-tls \
#     --from-file=ca.crt=OUTDIR/ca.crt --from-file=tls.crt=OUTDIR/tls.crt \
#     --from-file=tls.key=OUTDIR/tls.key
set -euo pipefail
ns="${1:?usage: make-certs.sh NAMESPACE OUTDIR [CLIENT_NAME]}"
out="${2:?usage: make-certs.sh NAMESPACE OUTDIR [CLIENT_NAME]}"
client="${3:-pybk-client}"
days=825
mkdir -p "$out"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=pybkd CA ($ns)" -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null

san="DNS:pybkd,DNS:pybkd.$ns.svc,DNS:*.pybkd.$ns.svc,DNS:*.pybkd.$ns.svc.cluster.local"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pybkd.$ns.svc" \
  -keyout "$out/tls.key" -out "$out/tls.csr" 2>/dev/null
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days "$days" -out "$out/tls.crt" \
  -extfile <(printf "subjectAltName=%s\nextendedKeyUsage=serverAuth\n" "$san") 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$client" \
  -keyout "$out/client.key" -out "$out/client.csr" 2>/dev/null
openssl x509 -req -in "$out/client.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -days "$days" -out "$out/client.crt" \
  -extfile <(printf "extendedKeyUsage=clientAuth\n") 2>/dev/null
rm -f "$out/tls.csr" "$out/client.csr" "$out/ca.srl"
echo "certificates for namespace $ns in $out"
