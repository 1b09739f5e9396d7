// Package pki is Tend's certificate authority and identity plumbing: the
// control plane's CA, server and client certificates, the CA pin that join
// tokens carry, and how identity and role are read from a certificate.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Roles carried in a certificate's OrganizationalUnit. Agents have
// RoleAgent; people and tools using the admin API have one of the three
// operator roles: viewer (read only), operator (viewer, plus approving
// tasks and re-arming policies) and admin (everything).
const (
	RoleAgent    = "agent"
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
)

// OperatorRoles are the roles of admin API credentials.
var OperatorRoles = []string{RoleViewer, RoleOperator, RoleAdmin}

// File names inside the control plane's data dir.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// CA is the control plane's certificate authority.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Key     crypto.Signer
}

// LoadOrCreateCA loads the CA from dir, or creates it (ECDSA P-256, 10
// years) on first start. The key is written with mode 0600.
func LoadOrCreateCA(dir string) (*CA, bool, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if err == nil {
		keyPEM, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, false, fmt.Errorf("CA certificate %s exists but its key does not: %w", certPath, err)
		}
		ca, err := ParseCA(certPEM, keyPEM)
		if err != nil {
			return nil, false, fmt.Errorf("load CA from %s: %w", dir, err)
		}
		return ca, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("read CA certificate: %w", err)
	}
	ca, keyPEM, err := NewCA("Tend CA")
	if err != nil {
		return nil, false, err
	}
	if err := WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, false, err
	}
	if err := WriteFileAtomic(certPath, ca.CertPEM, 0o644); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// NewCA creates a self-signed CA and returns it with its PEM private key.
func NewCA(commonName string) (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"tend"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return &CA{Cert: cert, CertPEM: EncodeCertPEM(der), Key: key}, keyPEM, nil
}

// ParseCA parses a PEM certificate and key into a CA.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, errors.New("certificate is not a CA")
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: certPEM, Key: key}, nil
}

// Pin is the CA's pin: "sha256:" and the hex SHA-256 of its
// SubjectPublicKeyInfo (as kubeadm's --discovery-token-ca-cert-hash).
func (ca *CA) Pin() string { return Pin(ca.Cert) }

// Pin computes the pin of any certificate.
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Pool returns a cert pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// IssueServerCert issues the control plane's serving certificate for the
// given host names and IPs. The chain includes the CA so that enrolling
// agents can check the CA pin on the handshake.
func (ca *CA) IssueServerCert(hosts []string, ttl time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := NewSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "tend-controlplane", Organization: []string{"tend"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// SignCSR checks a DER CSR's signature and issues a client certificate for
// commonName with role as its OU. The CSR's own subject is ignored: the
// identity is always the one the control plane chooses.
func (ca *CA) SignCSR(csrDER []byte, commonName, role string, ttl time.Duration) ([]byte, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	return ca.issueClient(csr.PublicKey, commonName, role, ttl)
}

// CheckCSR checks a DER CSR (format, signature, key type) without signing.
func CheckCSR(csrDER []byte) error {
	_, err := parseCSR(csrDER)
	return err
}

func parseCSR(csrDER []byte) (*x509.CertificateRequest, error) {
	if len(csrDER) > 16<<10 {
		return nil, fmt.Errorf("CSR of %d bytes is too large", len(csrDER))
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("CSR key: ECDSA curve %s not allowed (use P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("CSR key: type %T not allowed (use ECDSA P-256 or Ed25519)", csr.PublicKey)
	}
	return csr, nil
}

// IssueClientCert creates a key and a client certificate (PEM) for the
// identity, for credentials the control plane hands out itself (admin.conf).
func (ca *CA) IssueClientCert(commonName, role string, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := ca.issueClient(&key.PublicKey, commonName, role, ttl)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = EncodeKeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return EncodeCertPEM(der), keyPEM, nil
}

func (ca *CA) issueClient(pub crypto.PublicKey, commonName, role string, ttl time.Duration) ([]byte, error) {
	if commonName == "" || role == "" {
		return nil, errors.New("client certificate needs a common name and a role")
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName, OrganizationalUnit: []string{role}, Organization: []string{"tend"}},
		// Backdated for clock skew, but by less than a quarter of the
		// lifetime so that renewal at 2/3 stays meaningful for short TTLs.
		NotBefore:   now.Add(-min(2*time.Minute, ttl/4)),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
}

// Identity is who a verified client certificate says the caller is.
type Identity struct {
	ID     string // agent id, or the admin's name
	Role   string
	Serial string
	Expiry time.Time
}

// IdentityOf reads the identity of a verified client certificate.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if cert.Subject.CommonName == "" {
		return Identity{}, errors.New("client certificate has no common name")
	}
	if len(cert.Subject.OrganizationalUnit) != 1 {
		return Identity{}, errors.New("client certificate has no single role (OU)")
	}
	return Identity{
		ID:     cert.Subject.CommonName,
		Role:   cert.Subject.OrganizationalUnit[0],
		Serial: cert.SerialNumber.Text(16),
		Expiry: cert.NotAfter,
	}, nil
}

// NewSerial returns a random 128-bit certificate serial number.
func NewSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// EncodeCertPEM wraps DER in a CERTIFICATE block.
func EncodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// EncodeKeyPEM marshals a private key as PKCS#8 PEM.
func EncodeKeyPEM(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM parses the first certificate of a PEM block.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// ParseKeyPEM parses a PKCS#8 private key.
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil || !strings.HasSuffix(block.Type, "PRIVATE KEY") {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", k)
	}
	return s, nil
}

// WriteFileAtomic writes data to path through a synced temp file and a
// rename, so a crash never leaves a half-written key or certificate.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
