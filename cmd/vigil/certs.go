package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/cluster/tlsconf"
)

// newCertsCmd generates the CA and the certificates of a deployment.
func newCertsCmd(stdout io.Writer) *cobra.Command {
	var (
		dir                      string
		observers, agents        []string
		operators, viewers       []string
		caValidity, certValidity time.Duration
	)
	cmd := &cobra.Command{
		Use:   "certs --dir DIR --observer NAME=ADDR... [--agent NAME=ADDR...] [--operator NAME...] [--viewer NAME...]",
		Short: "Generate a CA and the mutual-TLS certificates of a deployment",
		Long: `Generate, in DIR, a private CA (ca.pem, ca-key.pem) and one certificate and
key per observer, node agent and admin client, all ECDSA P-256. Every
certificate names its holder as vigil://<kind>/<name>; observers and
agents get the given addresses as SANs. Roles on the admin API follow the
kind: operators may change state (pause, switchover, failover), viewers
may only read. Existing files are never overwritten.

Keep ca-key.pem offline once the certificates are issued; copy ca.pem,
<name>.pem and <name>-key.pem to each machine and point tls.ca, tls.cert
and tls.key (observers) or vigilctl --ca/--cert/--key at them. Observers
re-read their files on SIGHUP.`,
		Example: `  vigil certs --dir /etc/vigil/pki \
    --observer obs1=10.0.0.1 --observer obs2=10.0.0.2 --observer obs3=10.0.0.3 \
    --agent db1=10.0.0.11 --operator alice --viewer grafana`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if dir == "" {
				return usageError{errors.New("certs: --dir is required")}
			}
			if len(observers) == 0 {
				return usageError{errors.New("certs: at least one --observer NAME=ADDR is required")}
			}
			caCert, caKey, err := tlsconf.NewCA("vigil CA", caValidity)
			if err != nil {
				return err
			}
			files := map[string][]byte{"ca.pem": caCert, "ca-key.pem": caKey}
			issue := func(kind, spec string, withAddr bool) error {
				name, addr, _ := strings.Cut(spec, "=")
				id := tlsconf.Identity{Name: name, Kind: kind, NotAfter: time.Now().Add(certValidity)}
				if withAddr {
					if addr == "" {
						return usageError{fmt.Errorf("certs: --%s %q: want NAME=ADDR[,ADDR...]", kind, spec)}
					}
					for _, a := range strings.Split(addr, ",") {
						if ip := net.ParseIP(a); ip != nil {
							id.IPs = append(id.IPs, ip)
						} else {
							id.DNS = append(id.DNS, a)
						}
					}
				}
				c, k, err := tlsconf.Issue(caCert, caKey, id)
				if err != nil {
					return fmt.Errorf("certs: %s %s: %w", kind, name, err)
				}
				files[name+".pem"], files[name+"-key.pem"] = c, k
				return nil
			}
			for _, list := range []struct {
				kind     string
				specs    []string
				withAddr bool
			}{{"observer", observers, true}, {"agent", agents, true}, {"operator", operators, false}, {"viewer", viewers, false}} {
				for _, spec := range list.specs {
					if err := issue(list.kind, spec, list.withAddr); err != nil {
						return err
					}
				}
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("certs: %w", err)
			}
			if err := tlsconf.WriteFiles(dir, files); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote %d files to %s (CA: %s)\n", len(files), dir, filepath.Join(dir, "ca.pem"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory to write into (created; existing files are never overwritten)")
	f.StringArrayVar(&observers, "observer", nil, "observer NAME=ADDR[,ADDR...] (IPs or DNS names it is reached at); repeat")
	f.StringArrayVar(&agents, "agent", nil, "node agent NAME=ADDR[,ADDR...]; repeat")
	f.StringArrayVar(&operators, "operator", nil, "admin client allowed to change state; repeat")
	f.StringArrayVar(&viewers, "viewer", nil, "admin client allowed to read only; repeat")
	f.DurationVar(&caValidity, "ca-validity", 10*365*24*time.Hour, "validity of the CA")
	f.DurationVar(&certValidity, "validity", 365*24*time.Hour, "validity of each certificate")
	return cmd
}
