package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// PinnedTLSConfig is the client TLS config an agent uses to enroll: it has
// no CA yet, so it trusts the server only if the server's chain contains a
// CA whose public key matches the pin from the join token, and the leaf is
// signed by that CA for serverName.
func PinnedTLSConfig(pin, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if serverName == "" {
				return errors.New("no server name to verify the control plane's certificate against: give --server as HOST:PORT")
			}
			if len(cs.PeerCertificates) < 2 {
				return errors.New("control plane sent no CA certificate in its chain; cannot check the CA pin")
			}
			var ca *x509.Certificate
			for _, c := range cs.PeerCertificates[1:] {
				if c.IsCA && Pin(c) == pin {
					ca = c
					break
				}
			}
			if ca == nil {
				return fmt.Errorf("control plane CA does not match the pin in the join token (%s): wrong server, or a token from another control plane", pin)
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots:     pool,
				DNSName:   serverName,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				return fmt.Errorf("control plane certificate: %w", err)
			}
			return nil
		},
	}
}
