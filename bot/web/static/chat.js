// The web chat: sends taps and text to api/chat (relative: a city may live under /c/<city>/)
// and draws the channel-neutral replies.
// All wording comes from the page (the content pack); this file holds none.
//
// Layout contract (checked by tests/browser/): the log is the only scrolling area and
// the input bar sits below it, so nothing is ever drawn under the bar. When a reply arrives,
// it is shown whole if it fits (its choices included), else from its start.
(function () {
  "use strict";
  var FRAME = JSON.parse(document.getElementById("frame").textContent);
  var SOS = JSON.parse(document.getElementById("sos-names").textContent);
  var lang = document.documentElement.lang || "ja";
  var T = FRAME[lang];
  var log = document.getElementById("log");
  var form = document.getElementById("form");
  var input = document.getElementById("text");
  var pending = false;
  var exitButton = document.getElementById("exit");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  // -- the frame follows the conversation's language ----------------------------------
  function setLang(next) {
    if (!next || !FRAME[next]) return;
    lang = next;
    T = FRAME[next];
    document.documentElement.lang = next;
    document.title = T.title;
    document.getElementById("title").textContent = T.title;
    document.getElementById("lead").textContent = T.lead;
    exitButton.textContent = T.exit;
    exitButton.title = T.exit_hint;
    document.getElementById("exit-hint").textContent = T.exit_hint;
    document.getElementById("sos").setAttribute("aria-label", T.emergency_nav);
    document.querySelectorAll("[data-frame]").forEach(function (e) {
      e.textContent = T[e.getAttribute("data-frame")];
    });
    document.querySelectorAll(".sos-call").forEach(function (a) {
      var name = (SOS[next] || {})[a.getAttribute("data-line")];
      if (name) a.setAttribute("aria-label", name + " " + a.textContent);
    });
    log.setAttribute("aria-label", T.log);
    input.placeholder = T.placeholder;
    document.getElementById("text-label").textContent = T.placeholder;
    document.getElementById("send").textContent = T.send;
  }

  // -- drawing ---------------------------------------------------------------------------
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
    if (c.mail) {
      var m = el("a", null, T.mail + ": " + c.mail);
      m.href = "mailto:" + c.mail;
      var pm = el("p");
      pm.appendChild(m);
      d.appendChild(pm);
    }
    if (c.url) {
      var u = el("a", null, T.open_site);
      u.href = c.url;
      u.rel = "noopener";
      u.target = "_blank";
      var pu = el("p");
      pu.appendChild(u);
      d.appendChild(pu);
    }
    if (c.tel && !urgent && T.wrong_number) {
      // "This number did not work / was wrong": counted per window and sent to staff.
      var w = el("button", "wrong", T.wrong_number);
      w.type = "button";
      w.addEventListener("click", function () {
        if (pending) return;
        w.disabled = true;
        var me = el("div", "msg me", T.wrong_number);
        log.appendChild(me);
        send({ type: "tap", value: "wrong:" + c.id, state: null }, { echo: me });
      });
      d.appendChild(w);
    }
    return d;
  }

  function drawQuestion(r, turn) {
    turn.appendChild(el("div", "msg", r.text));
    // The log already announces the question; the group is labelled briefly, not with it.
    var ch = el("div", "choices");
    ch.setAttribute("role", "group");
    ch.setAttribute("aria-label", T.choices);
    r.choices.forEach(function (c) {
      var b = el("button", null, c.label);
      b.type = "button";
      b.setAttribute("data-value", c.value);
      b.addEventListener("click", function () {
        if (pending) return;
        var me = el("div", "msg me", c.label);
        log.appendChild(me);
        send({ type: "tap", value: c.value, state: r.state }, { echo: me, focus: "choice" });
      });
      ch.appendChild(b);
    });
    turn.appendChild(ch);
  }

  // One answer of the bot = one .turn in the log, in the language it was written in.
  function draw(replies, opts) {
    opts = opts || {};
    if (!replies.length) return;
    document.querySelectorAll("#log .choices").forEach(function (c) { c.remove(); });
    var turn = el("div", "turn");
    turn.lang = lang;
    replies.forEach(function (r) {
      if (r.type === "text") {
        turn.appendChild(el("div", "msg" + (r.urgent ? " urgent" : ""), r.text));
      } else if (r.type === "cards") {
        var box = el("section", "cards" + (r.urgent ? " urgent" : ""));
        box.appendChild(el("h2", null, r.title));
        r.cards.forEach(function (c) { box.appendChild(drawCard(c, r.urgent)); });
        turn.appendChild(box);
      } else if (r.type === "question") {
        drawQuestion(r, turn);
      }
    });
    log.appendChild(turn);
    reveal(opts.echo, turn);
    var first = turn.querySelector(".choices button");
    if (opts.focus === "choice" && first) first.focus({ preventScroll: true });
    else if (opts.focus === "choice") input.focus({ preventScroll: true });
  }

  function note(text) {
    var n = el("div", "turn");
    n.lang = lang;
    n.appendChild(el("div", "msg note", text));
    log.appendChild(n);
    return n;
  }

  // Show the new answer: whole (with the person's own words above it) when it fits the log,
  // else from its first line, so a long crisis reply starts with its caring words and lines.
  function reveal(echo, turn) {
    var box = log.getBoundingClientRect();
    var base = log.scrollTop - box.top;
    var end = turn.getBoundingClientRect().bottom + base;
    var tops = [echo, turn].filter(Boolean).map(function (e) {
      return e.getBoundingClientRect().top + base;
    });
    var room = log.clientHeight;
    for (var i = 0; i < tops.length; i++) {
      if (end - tops[i] <= room) { log.scrollTop = end - room; return; }
    }
    log.scrollTop = tops[tops.length - 1] - 8;
  }

  // -- talking to the server -----------------------------------------------------------
  function send(body, opts) {
    pending = true;
    log.setAttribute("aria-busy", "true");
    return fetch("api/chat", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    }).then(function (r) {
      if (!r.ok) throw new Error(String(r.status));
      return r.json();
    }).then(function (data) {
      if (data.exit) return leave();
      if (data.lang) setLang(data.lang);
      if (data.cleared) {
        log.textContent = "";
        opts = Object.assign({}, opts, { echo: note(T.cleared) });
      } else if (data.resumed && !log.children.length) {
        opts = Object.assign({}, opts, { echo: note(T.resumed) });
      }
      draw(data.replies, opts);
    }).catch(function () {
      var n = note(T.error);
      n.firstChild.className += " urgent";
      reveal(null, n);
    }).then(function () {
      pending = false;
      log.removeAttribute("aria-busy");
    });
  }

  // すぐに消す (typed 「けす」, or the button): clear the screen and leave for a neutral site,
  // replacing this page in the history so that Back does not return to it. The server forgets
  // the conversation (the request outlives the page: keepalive).
  function leave() {
    log.textContent = "";
    input.value = "";
    window.location.replace(T.exit_url);
  }
  exitButton.addEventListener("click", function () {
    fetch("api/chat", {
      method: "POST", credentials: "same-origin", keepalive: true,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: "tap", value: "cmd:quick_exit" })
    }).catch(function () {});
    leave();
  });

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = input.value.trim();
    if (!text || pending) return;
    input.value = "";
    var me = el("div", "msg me", text);
    log.appendChild(me);
    // After typing, focus stays in the input: the person may go on typing.
    send({ type: "text", text: text }, { echo: me, focus: "input" });
  });

  // Staff answers (after 担当者と話したい) arrive while the page is open: ask for them now and
  // then, only while the page is visible. They wait on the server until a poll acknowledges
  // them with the cursor it got.
  var cursor = 0;
  function poll() {
    if (document.visibilityState !== "visible" || pending) return;
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

  // Opening the page (first time, reload, back/forward, a new tab) shows the conversation
  // where it stands, drawn by the engine from the session; ?lang=en asks for English.
  var asked = document.body.getAttribute("data-asked-lang");
  var opening = { type: "open" };
  if (asked) opening.lang = asked;
  send(opening, {});
  window.addEventListener("pageshow", function (ev) {
    if (ev.persisted) poll();
  });
}());
