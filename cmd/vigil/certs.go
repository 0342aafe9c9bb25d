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
		renew                    bool
	)
	cmd := &cobra.Command{
		Use:   "certs --dir DIR --observer NAME=ADDR... [--agent NAME=ADDR...] [--operator NAME...] [--viewer NAME...]",
		Short: "Generate a CA and the mutual-TLS certificates of a deployment",
		Long: `Generate, in DIR, a private CA (ca.pem, ca-key.pem) and one certificate and
key per observer, node agent and admin client, all ECDSA P-256. Every
certificate names its holder as vigil://<kind>/<name>; observers and
agents get the given addresses as SANs. Roles on the admin API follow the
kind: operators may change state (pause, switchover, failover), viewers
may only read. Existing files are never overwritten, except with --renew.

When DIR already holds the CA (ca.pem and ca-key.pem), no new CA is made:
the certificates asked for are issued by that CA and added to DIR, so one
observer, agent or client can be added to a running deployment. With
--renew, a certificate that exists is replaced by a new one (new key, the
names and addresses given now, the new validity): each file is replaced
whole (rename), and the old pair is kept as <name>.pem.old and
<name>-key.pem.old. Send the holder SIGHUP (or restart it) to load it.

Keep ca-key.pem offline once the certificates are issued; copy ca.pem,
<name>.pem and <name>-key.pem to each machine and point tls.ca, tls.cert
and tls.key (observers) or vigilctl --ca/--cert/--key at them. Observers
re-read their files on SIGHUP.`,
		Example: `  vigil certs --dir /etc/vigil/pki \
    --observer obs1=10.0.0.1 --observer obs2=10.0.0.2 --observer obs3=10.0.0.3 \
    --agent db1=10.0.0.11 --operator alice --viewer grafana
  # later, with the same CA: add an agent, renew an observer's certificate
  vigil certs --dir /etc/vigil/pki --agent db4=10.0.0.14
  vigil certs --dir /etc/vigil/pki --observer obs2=10.0.0.2 --renew`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if dir == "" {
				return usageError{errors.New("certs: --dir is required")}
			}
			caCert, caKey, existing, err := loadCA(dir)
			if err != nil {
				return err
			}
			files := map[string][]byte{}
			if !existing {
				if len(observers) == 0 {
					return usageError{errors.New("certs: at least one --observer NAME=ADDR is required for a new CA")}
				}
				if renew {
					return usageError{fmt.Errorf("certs: --renew: %s holds no CA (ca.pem, ca-key.pem) to renew with", dir)}
				}
				if caCert, caKey, err = tlsconf.NewCA("vigil CA", caValidity); err != nil {
					return err
				}
				files["ca.pem"], files["ca-key.pem"] = caCert, caKey
			} else if len(observers)+len(agents)+len(operators)+len(viewers) == 0 {
				return usageError{errors.New("certs: the CA exists; name the certificates to add or renew (--observer, --agent, --operator, --viewer)")}
			}
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
			if renew {
				renewed, err := replaceFiles(dir, files)
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "wrote %d files to %s (CA: %s); replaced %d, the old ones kept as *.old\n",
					len(files), dir, filepath.Join(dir, "ca.pem"), renewed)
				return nil
			}
			if err := tlsconf.WriteFiles(dir, files); err != nil {
				if existing {
					return fmt.Errorf("%w (add --renew to replace an existing certificate)", err)
				}
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
	f.BoolVar(&renew, "renew", false, "replace certificates that exist (the CA in --dir must exist; the old files are kept as *.old)")
	return cmd
}

// loadCA reads dir's CA, if it has one: both files, or neither.
func loadCA(dir string) (cert, key []byte, ok bool, err error) {
	cp, kp := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	cert, cerr := os.ReadFile(cp)
	key, kerr := os.ReadFile(kp)
	switch {
	case errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist):
		return nil, nil, false, nil
	case cerr != nil:
		return nil, nil, false, fmt.Errorf("certs: read the CA certificate %s: %w", cp, cerr)
	case kerr != nil:
		return nil, nil, false, fmt.Errorf("certs: %s exists but its key %s cannot be read (%w): issuing needs the CA's key", cp, kp, kerr)
	}
	return cert, key, true, nil
}

// replaceFiles writes files into dir, replacing those that exist: each is
// written beside its place first (WriteFiles into a fresh directory in
// dir: same modes, synced) and then renamed over it, so a reader sees the
// old file or the new one, never half of one or none; an existing file is
// kept as <name>.old (a hard link). It returns how many files existed.
func replaceFiles(dir string, files map[string][]byte) (int, error) {
	tmp, err := os.MkdirTemp(dir, ".renew-")
	if err != nil {
		return 0, fmt.Errorf("certs: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := tlsconf.WriteFiles(tmp, files); err != nil {
		return 0, err
	}
	replaced := 0
	for name := range files {
		dst := filepath.Join(dir, name)
		if _, err := os.Lstat(dst); err == nil {
			// A second name for the old file; the rename below then
			// replaces dst in one step.
			_ = os.Remove(dst + ".old")
			if err := os.Link(dst, dst+".old"); err != nil {
				return replaced, fmt.Errorf("certs: keep %s as %s.old: %w", dst, dst, err)
			}
			replaced++
		}
		if err := os.Rename(filepath.Join(tmp, name), dst); err != nil {
			return replaced, fmt.Errorf("certs: put the new %s in place: %w", dst, err)
		}
	}
	return replaced, nil
}
