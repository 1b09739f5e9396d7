package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLoadOrCreateCAPersistsWith0600Key(t *testing.T) {
	dir := t.TempDir()
	ca, created, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	require.True(t, created)
	fi, err := os.Stat(filepath.Join(dir, CAKeyFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	again, created, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, ca.Pin(), again.Pin())
	require.True(t, strings.HasPrefix(ca.Pin(), "sha256:"))
	require.Len(t, ca.Pin(), len("sha256:")+64)
}

func csr(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "i-want-to-be-admin", OrganizationalUnit: []string{RoleAdmin}}}, key)
	require.NoError(t, err)
	return der
}

func TestSignCSRSetsIdentityIgnoringSubject(t *testing.T) {
	ca, _, err := NewCA("test")
	require.NoError(t, err)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := ca.SignCSR(csr(t, key), "agt-1", RoleAgent, time.Hour)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	id, err := IdentityOf(cert)
	require.NoError(t, err)
	require.Equal(t, "agt-1", id.ID)
	require.Equal(t, RoleAgent, id.Role, "the CSR's OU must never reach the certificate")
	_, err = cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(time.Hour), cert.NotAfter, time.Minute)
}

func TestSignCSRRefusesBadInput(t *testing.T) {
	ca, _, err := NewCA("test")
	require.NoError(t, err)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	good, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tampered := csr(t, good)
	tampered[len(tampered)-3] ^= 0xff
	for name, in := range map[string][]byte{
		"garbage":  []byte("not a csr"),
		"rsa key":  csr(t, rsaKey),
		"tampered": tampered,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ca.SignCSR(in, "agt-1", RoleAgent, time.Hour)
			require.Error(t, err)
		})
	}
}

func TestTokenRoundTripAndErrors(t *testing.T) {
	id, secret, err := NewJoinToken()
	require.NoError(t, err)
	ca, _, err := NewCA("t")
	require.NoError(t, err)
	tok := FormatToken(id, secret, ca.Pin())
	gid, gsecret, gpin, err := ParseToken(tok)
	require.NoError(t, err)
	require.Equal(t, id, gid)
	require.Equal(t, secret, gsecret)
	require.Equal(t, ca.Pin(), gpin)

	for _, bad := range []string{"", "abc", "abcdef.0123456789abcdef", "ABCDEF.0123456789abcdef." + strings.Repeat("a", 64), "abcdef.short." + strings.Repeat("a", 64), "abcdef.0123456789abcdef.xyz"} {
		_, _, _, err := ParseToken(bad)
		require.Error(t, err, bad)
	}
	_, _, err = SplitIDSecret(id + "." + secret)
	require.NoError(t, err)
	_, _, err = SplitIDSecret(id)
	require.Error(t, err)
}

func TestSigningKeyPersists(t *testing.T) {
	p := filepath.Join(t.TempDir(), SigningKeyFile)
	k, created, err := LoadOrCreateSigningKey(p)
	require.NoError(t, err)
	require.True(t, created)
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	k2, created, err := LoadOrCreateSigningKey(p)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, k.ID, k2.ID)
	require.Equal(t, k.Pub, k2.Pub)
}
