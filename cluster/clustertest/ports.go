package clustertest

import (
	"fmt"
	"net"
	"testing"
)

// FreePorts returns n distinct loopback ports that were free for both TCP
// and UDP (memberlist needs both on one port) a moment ago.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var (
		ports   []int
		closers []func()
	)
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			_ = ln.Close()
			continue
		}
		closers = append(closers, func() { _ = ln.Close(); _ = pc.Close() })
		ports = append(ports, port)
	}
	return ports
}
