package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// serveTLS accepts TLS connections on 127.0.0.1 with cert and completes
// (or fails) each handshake; it returns the address.
func serveTLS(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
	})
	return lis.Addr().String()
}

func dialPinned(addr, pin, serverName string) error {
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, PinnedTLSConfig(pin, serverName))
	if err != nil {
		return err
	}
	return c.Close()
}

func TestPinnedTLSConfig(t *testing.T) {
	ca, _, err := NewCA("right")
	require.NoError(t, err)
	other, _, err := NewCA("other")
	require.NoError(t, err)

	good, err := ca.IssueServerCert([]string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	require.Len(t, good.Certificate, 2, "the chain must carry the CA")

	leafOnly := good
	leafOnly.Certificate = good.Certificate[:1]

	fromOther, err := other.IssueServerCert([]string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)

	// An impostor serves its own leaf with the real (public) CA
	// certificate appended: the pin matches, the signature does not.
	impostor := fromOther
	impostor.Certificate = [][]byte{fromOther.Certificate[0], ca.Cert.Raw}

	// A chain whose second certificate is the leaf itself: pinning the
	// leaf must not work, only a CA.
	selfChain := good
	selfChain.Certificate = [][]byte{good.Certificate[0], good.Certificate[0]}
	leafPin := Pin(good.Leaf)

	expired, err := ca.IssueServerCert([]string{"127.0.0.1"}, -time.Minute)
	require.NoError(t, err)

	tests := []struct {
		name       string
		cert       tls.Certificate
		pin        string
		serverName string
		wantErr    []string // substrings; none means the handshake succeeds
		wantX509   any      // pointer to an x509 error type wrapped in the error
	}{
		{name: "CA matches the pin", cert: good, pin: ca.Pin(), serverName: "127.0.0.1"},
		{name: "different CA", cert: fromOther, pin: ca.Pin(), serverName: "127.0.0.1", wantErr: []string{"does not match the pin", ca.Pin()}},
		{name: "pin of another CA", cert: good, pin: other.Pin(), serverName: "127.0.0.1", wantErr: []string{"does not match the pin"}},
		{name: "leaf only", cert: leafOnly, pin: ca.Pin(), serverName: "127.0.0.1", wantErr: []string{"no CA certificate in its chain", "pin"}},
		{name: "wrong server name", cert: good, pin: ca.Pin(), serverName: "cp.example.com", wantErr: []string{"control plane certificate"}, wantX509: new(x509.HostnameError)},
		{name: "wrong server IP", cert: good, pin: ca.Pin(), serverName: "10.0.0.1", wantErr: []string{"control plane certificate"}, wantX509: new(x509.HostnameError)},
		{name: "impostor leaf with the real CA appended", cert: impostor, pin: ca.Pin(), serverName: "127.0.0.1", wantErr: []string{"control plane certificate"}, wantX509: new(x509.UnknownAuthorityError)},
		{name: "pinning a leaf is not enough", cert: selfChain, pin: leafPin, serverName: "127.0.0.1", wantErr: []string{"does not match the pin"}},
		{name: "expired server certificate", cert: expired, pin: ca.Pin(), serverName: "127.0.0.1", wantErr: []string{"control plane certificate"}, wantX509: new(x509.CertificateInvalidError)},
		{name: "empty pin", cert: good, pin: "", serverName: "127.0.0.1", wantErr: []string{"does not match the pin"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveTLS(t, tc.cert)
			err := dialPinned(addr, tc.pin, tc.serverName)
			if len(tc.wantErr) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, w := range tc.wantErr {
				require.ErrorContains(t, err, w)
			}
			switch want := tc.wantX509.(type) {
			case *x509.HostnameError:
				require.True(t, errors.As(err, want), "want an x509.HostnameError, got %T: %v", err, err)
			case *x509.UnknownAuthorityError:
				require.True(t, errors.As(err, want), "want an x509.UnknownAuthorityError, got %T: %v", err, err)
			case *x509.CertificateInvalidError:
				require.True(t, errors.As(err, want), "want an x509.CertificateInvalidError, got %T: %v", err, err)
				require.Equal(t, x509.Expired, want.Reason)
			}
		})
	}
}

// The config refuses anything older than TLS 1.3.
func TestPinnedTLSConfigRequiresTLS13(t *testing.T) {
	ca, _, err := NewCA("t")
	require.NoError(t, err)
	cert, err := ca.IssueServerCert([]string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS12})
	require.NoError(t, err)
	defer lis.Close()
	go func() {
		c, err := lis.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	err = dialPinned(lis.Addr().String(), ca.Pin(), "127.0.0.1")
	require.Error(t, err)
}
