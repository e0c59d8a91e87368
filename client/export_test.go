package client

// DropForTest closes c's network connection without telling its reader, as
// a network failure would.
func DropForTest(c *Conn) {
	c.mu.Lock()
	ws := c.ws
	c.mu.Unlock()
	ws.UnderlyingConn().Close()
}
