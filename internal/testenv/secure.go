package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// SecureKafka is a broker this test owns that accepts clients only over TLS with
// SASL/SCRAM-SHA-256.
type SecureKafka struct {
	*Service
	Brokers  string // the SASL_SSL listener
	CAFile   string // PEM of the CA that signed the broker's certificate
	User     string
	Password string
}

// OwnSecureKafka starts a single KRaft broker whose client listener is SASL_SSL
// (SCRAM-SHA-256), with a CA and a server certificate made here, and one SCRAM user.
func OwnSecureKafka(t testing.TB) *SecureKafka {
	t.Helper()
	lib := filepath.Join(CacheDir(t), "kafka-lib")
	dir := t.TempDir()
	ca, keystore := makeCerts(t, dir)
	port, internal, cport := FreePort(t), FreePort(t), FreePort(t)
	props := fmt.Sprintf(`process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:%[3]d
listeners=SASL_SSL://127.0.0.1:%[1]d,INTERNAL://127.0.0.1:%[2]d,CONTROLLER://127.0.0.1:%[3]d
advertised.listeners=SASL_SSL://127.0.0.1:%[1]d,INTERNAL://127.0.0.1:%[2]d,CONTROLLER://127.0.0.1:%[3]d
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=%[4]s
log.dirs=%[5]s/data
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=2
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
`, port, internal, cport, keystore, dir)
	propsPath := filepath.Join(dir, "server.properties")
	if err := os.WriteFile(propsPath, []byte(props), 0o644); err != nil {
		t.Fatal(err)
	}
	user, pass := "relaybox", "scram-"+Name(t, "pw")
	out, err := exec.Command("java", "-cp", lib+"/*", "kafka.tools.StorageTool", "format", "--standalone", "-t", "relayboxsecure000000000",
		"-c", propsPath, "--add-scram", fmt.Sprintf("SCRAM-SHA-256=[name=%s,password=%s]", user, pass)).CombinedOutput()
	if err != nil {
		t.Fatalf("formatting secure kafka: %v\n%s", err, out)
	}
	s := &Service{t: t, name: "own secure kafka", logPath: filepath.Join(dir, "kafka.log"),
		args:  []string{"-Xmx384m", "-Xms128m", "-cp", lib + "/*", "kafka.Kafka", propsPath},
		ready: func() bool { return portOpen(port) && portOpen(internal) }}
	s.Start()
	t.Cleanup(func() { s.Stop(true) })
	return &SecureKafka{Service: s, Brokers: fmt.Sprintf("127.0.0.1:%d", port), CAFile: ca, User: user, Password: pass}
}

// makeCerts writes ca.pem and a keystore PEM (key + chain) for 127.0.0.1/localhost.
func makeCerts(t testing.TB, dir string) (caFile, keystore string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relaybox test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	caFile, keystore = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "keystore.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	ks := append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	ks = append(ks, caPEM...)
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keystore, ks, 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, keystore
}
