# Certificates and keys of the local cluster, made with openssl (sourced by up.sh).
# One CA signs the API server's serving certificate (the node address where it listens, the
# `kubernetes` Service's IP and names) and one admin client certificate (O=system:masters) that
# kubectl, the kubelet, the controller manager, the scheduler, kube-proxy and CoreDNS share.
# ECDSA P-256 keys: generated in milliseconds, accepted by every component.

new_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

make_ca() {
  new_key "$pki_dir/ca.key"
  openssl req -x509 -new -key "$pki_dir/ca.key" -subj "/CN=celery-operator-local-ca" \
    -days 3650 -out "$pki_dir/ca.crt" 2>/dev/null
}

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
sign() {
  local name=$1 subject=$2 extensions=$3
  new_key "$pki_dir/$name.key"
  openssl req -new -key "$pki_dir/$name.key" -subj "$subject" -out "$pki_dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki_dir/$name.csr" -CA "$pki_dir/ca.crt" -CAkey "$pki_dir/ca.key" \
    -CAcreateserial -days 3650 -extfile <(printf '%b' "$extensions") \
    -out "$pki_dir/$name.crt" 2>/dev/null
  rm -f "$pki_dir/$name.csr"
}

make_pki() {
  mkdir -p "$pki_dir" && chmod 700 "$pki_dir"
  make_ca
  sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth\nsubjectAltName=IP:$node_ip,IP:$service_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$cluster_domain"
  sign admin "/O=system:masters/CN=kubernetes-admin" "extendedKeyUsage=clientAuth"
  new_key "$pki_dir/sa.key"
  openssl ec -in "$pki_dir/sa.key" -pubout -out "$pki_dir/sa.pub" 2>/dev/null
}

write_kubeconfig() {
  cat > "$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: celery-operator-local
  cluster:
    server: https://$node_ip:$apiserver_port
    certificate-authority: $pki_dir/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki_dir/admin.crt
    client-key: $pki_dir/admin.key
contexts:
- name: celery-operator-local
  context: {cluster: celery-operator-local, user: admin}
current-context: celery-operator-local
EOF
}
