// The web chat: sends taps and text to api/chat (relative: a city may live under /c/<city>/) and draws the channel-neutral replies.
// All wording comes from the page (the content pack); this file holds none.
(function () {
  "use strict";
  var T = JSON.parse(document.getElementById("texts").textContent);
  var log = document.getElementById("log");
  var form = document.getElementById("form");
  var input = document.getElementById("text");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function scroll() {
    var last = log.lastElementChild;
    if (last && log.children.length > 2) last.scrollIntoView({ block: "end" });
  }

  function drawCard(c, urgent) {
    var d = el("div", "card");
    d.appendChild(el("h3", null, c.name));
    d.appendChild(el("p", null, c.summary));
    if (c.hours) d.appendChild(el("p", null, c.hours));
    if (c.status) d.appendChild(el("p", "status " + (c.open_now === false ? "closed" : "open"), c.status));
    if (c.tel) {
      var a = el("a", "call", T.call + " " + c.phone);
      a.href = c.tel;
      d.appendChild(a);
    }
    if (c.mail) { var m = el("a", null, T.mail + ": " + c.mail); m.href = "mailto:" + c.mail;
                  var pm = el("p"); pm.appendChild(m); d.appendChild(pm); }
    if (c.url) { var u = el("a", null, T.open_site); u.href = c.url; u.rel = "noopener";
                 u.target = "_blank"; var pu = el("p"); pu.appendChild(u); d.appendChild(pu); }
    if (c.tel && !urgent && T.wrong_number) {
      // "This number did not work / was wrong": counted per window and sent to staff.
      var w = el("button", "wrong", T.wrong_number);
      w.type = "button";
      w.addEventListener("click", function () {
        w.disabled = true;
        log.appendChild(el("div", "msg me", T.wrong_number));
        send({ type: "tap", value: "wrong:" + c.id, state: null });
      });
      d.appendChild(w);
    }
    return d;
  }

  function draw(replies) {
    document.querySelectorAll(".choices").forEach(function (c) { c.remove(); });
    replies.forEach(function (r) {
      if (r.type === "text") {
        log.appendChild(el("div", "msg" + (r.urgent ? " urgent" : ""), r.text));
      } else if (r.type === "cards") {
        var box = el("section", "cards" + (r.urgent ? " urgent" : ""));
        box.appendChild(el("h2", null, r.title));
        r.cards.forEach(function (c) { box.appendChild(drawCard(c, r.urgent)); });
        log.appendChild(box);
      } else if (r.type === "question") {
        log.appendChild(el("div", "msg", r.text));
        var ch = el("div", "choices");
        ch.setAttribute("role", "group");
        ch.setAttribute("aria-label", r.text);
        r.choices.forEach(function (c) {
          var b = el("button", null, c.label);
          b.type = "button";
          b.addEventListener("click", function () {
            log.appendChild(el("div", "msg me", c.label));
            send({ type: "tap", value: c.value, state: r.state });
          });
          ch.appendChild(b);
        });
        log.appendChild(ch);
      }
    });
    scroll();
  }

  function send(body) {
    return fetch("api/chat", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    }).then(function (r) {
      if (!r.ok) throw new Error(String(r.status));
      return r.json();
    }).then(function (data) { draw(data.replies); })
      .catch(function () { log.appendChild(el("div", "msg urgent", T.error)); scroll(); });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    log.appendChild(el("div", "msg me", text));
    send({ type: "text", text: text });
  });

  // Staff answers (after 担当者と話したい) arrive while the page is open: ask for them now and
  // then, only while the page is visible.
  // Staff answers wait on the server until a poll acknowledges them with the cursor it got.
  var cursor = 0;
  function poll() {
    if (document.visibilityState !== "visible") return;
    fetch("api/chat/poll?ack=" + cursor, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : { replies: [], cursor: cursor }; })
      .then(function (data) {
        if (data.cursor > cursor) {
          if (data.replies.length) draw(data.replies);
          cursor = data.cursor;
        }
      })
      .catch(function () {});
  }
  setInterval(poll, 5000);

  send({ type: "start" });
}());
