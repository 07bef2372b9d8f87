import COpenSSL
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TCP connection to a mail or web server, optionally wrapped in TLS
/// (OpenSSL, the system's trust store, certificate and host name checked).
/// Every read and write times out, so an unresponsive server fails the
/// notification instead of hanging the backup job.
final class NetworkConnection {
    private var fd: Int32
    private var ctx: OpaquePointer?
    private var ssl: OpaquePointer?
    private var buffer: [UInt8] = []
    let host: String
    let port: Int

    init(host: String, port: Int, timeout: Int = 30) throws {
        self.host = host
        self.port = port
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw NotifyError("cannot resolve '\(host)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = ECONNREFUSED
        var connected: Int32 = -1
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let s = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if s >= 0 {
                var tv = timeval(tv_sec: timeout, tv_usec: 0)
                // On Linux SO_SNDTIMEO also bounds connect().
                setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                if connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { connected = s; break }
                lastError = errno
                close(s)
            }
            ai = a.pointee.ai_next
        }
        guard connected >= 0 else {
            throw NotifyError("cannot connect to \(host):\(port): \(String(cString: strerror(lastError)))")
        }
        fd = connected
    }

    deinit {
        if let ssl { SSL_shutdown(ssl); SSL_free(ssl) }
        if let ctx { SSL_CTX_free(ctx) }
        close(fd)
    }

    /// Starts TLS on the connection (at once for `tls`, after `STARTTLS`).
    func startTLS() throws {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw Self.sslError("cannot create a TLS context") }
        self.ctx = ctx
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        guard SSL_CTX_set_default_verify_paths(ctx) == 1 else { throw Self.sslError("cannot load the system's CA certificates") }
        guard let ssl = SSL_new(ctx) else { throw Self.sslError("cannot create a TLS session") }
        self.ssl = ssl
        SSL_set_fd(ssl, fd)
        _ = host.withCString { name in
            // SSL_set_tlsext_host_name is a macro: SNI through SSL_ctrl.
            SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name), UnsafeMutableRawPointer(mutating: name))
        }
        guard SSL_set1_host(ssl, host) == 1 else { throw Self.sslError("cannot set the expected host name") }
        if SSL_connect(ssl) != 1 {
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK {
                throw NotifyError("TLS handshake with \(host):\(port) failed: certificate verify failed: \(String(cString: X509_verify_cert_error_string(verify)))")
            }
            throw Self.sslError("TLS handshake with \(host):\(port) failed")
        }
    }

    static func sslError(_ what: String) -> NotifyError {
        let code = ERR_get_error()
        guard code != 0 else { return NotifyError(what) }
        let text = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 256) { buf in
            ERR_error_string_n(code, buf.baseAddress, buf.count)
            return String(cString: buf.baseAddress!)
        }
        return NotifyError("\(what): \(text)")
    }

    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n: Int = bytes[offset...].withUnsafeBytes { b in
                if let ssl { return Int(SSL_write(ssl, b.baseAddress, Int32(min(b.count, 1 << 20)))) }
                return Glibc.send(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL))
            }
            if n <= 0 {
                if ssl == nil, n < 0, errno == EINTR { continue }
                throw NotifyError("writing to \(host):\(port) failed\(ssl == nil ? ": \(String(cString: strerror(errno)))" : "")")
            }
            offset += n
        }
    }

    func write(_ text: String) throws { try write(Array(text.utf8)) }

    /// Reads more bytes into the buffer; false at the end of the stream.
    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n: Int = chunk.withUnsafeMutableBytes { b in
                if let ssl { return Int(SSL_read(ssl, b.baseAddress, Int32(b.count))) }
                return recv(fd, b.baseAddress, b.count, 0)
            }
            if n > 0 { buffer += chunk[0..<n]; return true }
            if n == 0 { return false }
            if ssl == nil, errno == EINTR { continue }
            if ssl != nil, SSL_get_error(ssl, Int32(n)) == SSL_ERROR_ZERO_RETURN { return false }
            let timedOut = errno == EAGAIN || errno == EWOULDBLOCK
            throw NotifyError("reading from \(host):\(port) failed: \(timedOut ? "timed out" : String(cString: strerror(errno)))")
        }
    }

    /// One line without its CRLF; nil at the end of the stream.
    func readLine() throws -> String? {
        while true {
            if let i = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                var line = Array(buffer[..<i])
                buffer.removeSubrange(...i)
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard try fill() else {
                if buffer.isEmpty { return nil }
                defer { buffer.removeAll() }
                return String(decoding: buffer, as: UTF8.self)
            }
        }
    }

    /// Everything until the server closes the connection.
    func readToEnd(limit: Int = 1 << 20) throws -> [UInt8] {
        while buffer.count < limit, try fill() {}
        defer { buffer.removeAll() }
        return buffer
    }
}
