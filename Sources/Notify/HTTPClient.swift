import Foundation

/// An `http://` or `https://` URL, split for one request.
struct HTTPURL: Sendable {
    var tls: Bool
    var host: String
    var port: Int
    var target: String

    init(_ text: String) throws {
        guard let u = URLComponents(string: text), let scheme = u.scheme?.lowercased(), ["http", "https"].contains(scheme),
              let host = u.host, !host.isEmpty
        else { throw NotifyError("invalid url '\(text)': expected http://host[:port]/path or https://…") }
        guard !text.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value == 0x7f }) else {
            throw NotifyError("invalid url '\(text)': contains spaces or control characters")
        }
        tls = scheme == "https"
        self.host = host
        port = u.port ?? (tls ? 443 : 80)
        let path = u.percentEncodedPath.isEmpty ? "/" : u.percentEncodedPath
        target = path + (u.percentEncodedQuery.map { "?" + $0 } ?? "")
    }
}

/// One HTTP/1.1 request per connection (`Connection: close`); a status
/// outside 2xx is an error quoting the status line.
enum HTTPClient {
    static func checkHeader(name: String, value: String) throws {
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_".contains($0)) }) else {
            throw NotifyError("invalid header name '\(name)'")
        }
        guard !value.unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" || $0.value == 0 }) else {
            throw NotifyError("header '\(name)': the value contains a line break")
        }
    }

    static func send(method: String, url: HTTPURL, headers: [(name: String, value: String)], body: [UInt8]) throws {
        let c = try NetworkConnection(host: url.host, port: url.port)
        if url.tls { try c.startTLS() }
        let hostHeader = url.port == (url.tls ? 443 : 80) ? url.host : "\(url.host):\(url.port)"
        var head = "\(method) \(url.target) HTTP/1.1\r\nHost: \(hostHeader)\r\nUser-Agent: snapdump\r\nConnection: close\r\n"
        for h in headers { head += "\(h.name): \(h.value)\r\n" }
        if method != "GET" || !body.isEmpty { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        try c.write(Array(head.utf8) + body)
        guard let status = try c.readLine() else {
            throw NotifyError("\(url.host):\(url.port) closed the connection without an answer")
        }
        let parts = status.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]) else {
            throw NotifyError("\(url.host):\(url.port) sent a malformed status line: '\(status)'")
        }
        guard (200..<300).contains(code) else { throw NotifyError("\(method) \(url.target) failed: \(status)") }
    }
}
