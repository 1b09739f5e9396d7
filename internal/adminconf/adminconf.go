// Package adminconf reads and writes admin.conf, the ready client config the
// control plane writes on first start (like kubeadm's admin.conf).
package adminconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"tend.dev/tend/internal/pki"
)

// Config is the content of admin.conf.
type Config struct {
	// Server is the control plane's gRPC address (host:port).
	Server string `yaml:"server"`
	// ServerName is the name to verify the server certificate against
	// (default: the host part of Server).
	ServerName string `yaml:"serverName,omitempty"`
	// CA is the PEM of the control plane's CA certificate.
	CA string `yaml:"ca"`
	// Cert and Key are the PEM client certificate and private key.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Load reads and checks admin.conf.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("admin config %s does not exist: start the control plane once (it writes DATA_DIR/admin.conf) or pass --config / $TEND_CONFIG", path)
		}
		return nil, fmt.Errorf("read admin config: %w", err)
	}
	var c Config
	if err := yaml.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("admin config %s: %w", path, err)
	}
	switch {
	case c.Server == "":
		return nil, fmt.Errorf("admin config %s: field server is empty", path)
	case c.CA == "":
		return nil, fmt.Errorf("admin config %s: field ca is empty", path)
	case c.Cert == "" || c.Key == "":
		return nil, fmt.Errorf("admin config %s: fields cert and key are required", path)
	}
	return &c, nil
}

// Save writes the config with mode 0600 (it holds a private key), atomically.
func Save(path string, c *Config) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	return pki.WriteFileAtomic(path, b, 0o600)
}

// TLSConfig builds the client TLS config: the admin certificate, and the CA
// as the only trusted root.
func (c *Config) TLSConfig() (*tls.Config, error) {
	cert, err := tls.X509KeyPair([]byte(c.Cert), []byte(c.Key))
	if err != nil {
		return nil, fmt.Errorf("admin config: bad cert/key: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(c.CA)) {
		return nil, errors.New("admin config: field ca holds no PEM certificate")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   c.ServerName,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// Dial returns a client connection to the control plane with the admin
// credentials (the connection itself is made by the first call).
func (c *Config) Dial() (*grpc.ClientConn, error) {
	tc, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(c.Server, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
}
