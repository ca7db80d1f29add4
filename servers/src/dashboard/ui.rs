//! Drawing the dashboard: the servers' table, the selected server's events and log, the key
//! help, and the window open over them (command list, argument form, new server).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, Clear, List, ListItem, ListState, Paragraph, Row, Table, TableState, Wrap,
};
use ratatui::Frame;

use super::app::{App, Overlay};
use super::launch;
use crate::kinds::KINDS;

/// Draws everything.
pub fn draw(frame: &mut Frame, app: &App) {
    let [table, panels, help] = Layout::vertical([
        Constraint::Length((app.rows.len() as u16 + 3).clamp(4, 12)),
        Constraint::Fill(1),
        Constraint::Length(2),
    ])
    .areas(frame.area());
    draw_servers(frame, app, table);
    let [events, log] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(panels);
    draw_events(frame, app, events);
    draw_log(frame, app, log);
    draw_help(frame, app, help);
    match &app.overlay {
        Overlay::None => {}
        Overlay::Commands { filter, selected } => draw_commands(frame, app, filter, *selected),
        Overlay::Form { .. } => draw_form(frame, app),
        Overlay::Launch { kind, flags } => draw_launch(frame, *kind, flags),
    }
}

fn draw_servers(frame: &mut Frame, app: &App, area: Rect) {
    let rate = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.1}"));
    let rows = app.rows.iter().map(|row| {
        let (status, colour) = match (&row.gone, row.alive) {
            (_, false) => ("dead (orphaned pipe)".to_string(), Color::Red),
            (Some(reason), true) if !reason.is_empty() => {
                ("unreachable".to_string(), Color::Yellow)
            }
            _ => ("alive".to_string(), Color::Green),
        };
        Row::new(vec![
            Cell::from(row.name.clone()),
            Cell::from(row.state.clone().unwrap_or_else(|| "-".into())),
            Cell::from(row.pid.map_or("-".into(), |p| p.to_string())),
            Cell::from(row.subscribers.map_or("-".into(), |s| s.to_string())),
            Cell::from(row.model.clone().unwrap_or_else(|| "-".into())),
            Cell::from(rate(row.requests_per_s)),
            Cell::from(rate(row.tokens_per_s)),
            Cell::from(status).style(Style::new().fg(colour)),
        ])
    });
    let widths = [
        Constraint::Length(14),
        Constraint::Length(13),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Fill(1),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(21),
    ];
    let header = Row::new([
        "NAME", "STATE", "PID", "SUBS", "MODEL", "REQ/S", "TOK/S", "STATUS",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let title = format!(" cpipe dashboard: servers in {} ", app.dir.display());
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(chosen(true))
        .highlight_symbol("> ");
    let mut state =
        TableState::default().with_selected((!app.rows.is_empty()).then_some(app.selected));
    frame.render_stateful_widget(table, area, &mut state);
    if app.rows.is_empty() {
        let hint = Paragraph::new("no servers here: press n to start one");
        frame.render_widget(hint, inner(area));
    }
}

fn draw_events(frame: &mut Frame, app: &App, area: Rect) {
    let name = app.selected_row().map_or("", |r| r.name.as_str());
    let events = app.events();
    let height = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = events[events.len().saturating_sub(height)..]
        .iter()
        .map(|e| Line::from(*e))
        .collect();
    let block = Block::bordered().title(format!(" events: {name} "));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_log(frame: &mut Frame, app: &App, area: Rect) {
    let Some(row) = app.selected_row() else {
        frame.render_widget(Block::bordered().title(" log "), area);
        return;
    };
    let height = area.height.saturating_sub(2) as usize;
    let text = match launch::log_tail(&app.dir, &row.name, height) {
        Some(lines) => lines.into_iter().map(Line::from).collect::<Vec<_>>(),
        None => vec![Line::from(
            "(started outside the dashboard: its log is where it was started)",
        )],
    };
    let block = Block::bordered().title(format!(" log: {} ", row.name));
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: false }).block(block),
        area,
    );
}

fn draw_help(frame: &mut Frame, app: &App, area: Rect) {
    let keys = match app.overlay {
        Overlay::None => "↑↓ select   Enter send a command   n start a server   s stop it   q quit",
        Overlay::Commands { .. } => "type to filter   ↑↓ choose   Enter open   Esc back",
        Overlay::Form { .. } => {
            "type a value (JSON or text)   Tab next field   Enter send   Esc back"
        }
        Overlay::Launch { .. } => "←→ kind   type flags as in a shell   Enter start   Esc back",
    };
    let lines = vec![
        Line::from(Span::styled(
            keys,
            Style::new().add_modifier(Modifier::BOLD),
        )),
        Line::from(app.status.as_str()),
    ];
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_commands(frame: &mut Frame, app: &App, filter: &str, selected: usize) {
    let area = centered(frame.area(), 70, 60);
    frame.render_widget(Clear, area);
    let items: Vec<ListItem> = app
        .visible_commands()
        .into_iter()
        .map(|(name, summary)| {
            ListItem::new(Line::from(vec![
                Span::styled(
                    format!("{name:<18}"),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::raw(summary.to_string()),
            ]))
        })
        .collect();
    let title = format!(
        " command for {}: {filter}_ ",
        app.selected_row().map_or("", |r| r.name.as_str())
    );
    let list = List::new(items)
        .block(Block::bordered().title(title))
        .highlight_style(chosen(true))
        .highlight_symbol("> ");
    frame.render_stateful_widget(
        list,
        area,
        &mut ListState::default().with_selected(Some(selected)),
    );
}

fn draw_form(frame: &mut Frame, app: &App) {
    let Overlay::Form {
        command,
        fields,
        focus,
    } = &app.overlay
    else {
        return;
    };
    let area = centered(frame.area(), 70, 60);
    frame.render_widget(Clear, area);
    let lines: Vec<Line> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let cursor = if i == *focus { "_" } else { "" };
            let style = chosen(i == *focus);
            Line::from(vec![
                Span::styled(
                    format!("{:>14} ", f.name),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::styled(format!("{}{cursor}", f.value), style),
                Span::styled(format!("  ({})", f.hint), Style::new().fg(Color::DarkGray)),
            ])
        })
        .collect();
    let block = Block::bordered().title(format!(
        " {command}: its arguments (empty ones are left out) "
    ));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_launch(frame: &mut Frame, kind: usize, flags: &str) {
    let area = centered(frame.area(), 70, 30);
    frame.render_widget(Clear, area);
    let kinds: Vec<Span> = KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let style = chosen(i == kind);
            Span::styled(format!(" {} ", k.name), style)
        })
        .collect();
    let lines = vec![
        Line::from(kinds),
        Line::from(KINDS[kind].summary),
        Line::from(""),
        Line::from(format!("flags: {flags}_")),
        Line::from(Span::styled(
            "e.g. --name mychat --model smollm2 (cpipe --serve KIND --help lists them)",
            Style::new().fg(Color::DarkGray),
        )),
    ];
    let block = Block::bordered().title(" start a server ");
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block),
        area,
    );
}

/// How the chosen row, field or kind is drawn: reversed.
fn chosen(on: bool) -> Style {
    if on {
        Style::new().add_modifier(Modifier::REVERSED)
    } else {
        Style::new()
    }
}

/// A rectangle `percent_x` by `percent_y` of `area`, in its middle.
fn centered(area: Rect, percent_x: u16, percent_y: u16) -> Rect {
    let [_, middle, _] = Layout::vertical([
        Constraint::Percentage((100 - percent_y) / 2),
        Constraint::Percentage(percent_y),
        Constraint::Percentage((100 - percent_y) / 2),
    ])
    .areas(area);
    let [_, centre, _] = Layout::horizontal([
        Constraint::Percentage((100 - percent_x) / 2),
        Constraint::Percentage(percent_x),
        Constraint::Percentage((100 - percent_x) / 2),
    ])
    .areas(middle);
    centre
}

/// `area` inside its border, below the table's header.
fn inner(area: Rect) -> Rect {
    Rect {
        x: area.x + 1,
        y: area.y + 2,
        width: area.width.saturating_sub(2),
        height: area.height.saturating_sub(3),
    }
}
